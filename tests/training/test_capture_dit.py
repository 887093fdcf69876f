"""``saeuron cache`` on transformer blocks: the stored tokens are the block's image tokens of
the recorded rows, exactly (SD3 joint, FLUX single-stream, PixArt)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saeuron.models.hookpoints import resolve_module
from saeuron.models.tiny import build_tiny
from saeuron.training.capture import CacheConfig, run_cache

PROMPTS = ["a cat", "a dog on a sofa", "a red car"]
STEPS = 2
CASES = [
    # (model, hookpoint, activation site, CFG batch, image tokens per row)
    ("tiny-sd3", "transformer.transformer_blocks.0", "output", True, 64),
    ("tiny-flux", "transformer.single_transformer_blocks.1", "update", False, 64),
    ("tiny-pixart", "transformer.transformer_blocks.2", "output", True, 256),
]


def image_tokens(model: str, hook: str, site: str) -> dict[tuple[int, int], torch.Tensor]:
    """(prompt, step) -> the conditional row's image tokens, read by a plain hook."""
    pipe = build_tiny(model)
    module = resolve_module(pipe, hook)
    found: dict[tuple[int, int], torch.Tensor] = {}
    calls: list[torch.Tensor] = []

    def record(m, args, kwargs, output) -> None:
        image = output if torch.is_tensor(output) else output[1]
        before = args[0] if args else kwargs["hidden_states"]
        calls.append((image - before if site == "update" else image)[-1])

    for i, prompt in enumerate(PROMPTS):
        calls.clear()
        handle = module.register_forward_hook(record, with_kwargs=True)
        try:
            pipe([prompt], num_inference_steps=STEPS, guidance_scale=4.0,
                 generator=[torch.Generator().manual_seed(i)], output_type="latent")  # fmt: skip
        finally:
            handle.remove()
        for step, tokens in enumerate(calls):
            found[(i, step)] = tokens
    return found


@pytest.mark.parametrize(("model", "hook", "site", "guidance", "tokens"), CASES)
def test_capture_stores_the_image_tokens_of_the_conditional_rows(
    model, hook, site, guidance, tokens, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "acts"
    manifest = run_cache(
        CacheConfig(model=model, hookpoint=hook, prompts=str(prompts), out=str(out),
                    num_inference_steps=STEPS, guidance_scale=4.0, batch_size=2,
                    dtype="float32", activation_site=site, scheduler="pipeline")  # fmt: skip
    )
    # One recorded row per prompt and step: the conditional half only; no text tokens.
    assert manifest["d_in"] == 32 and manifest["tokens_per_step"] == tokens
    assert manifest["rows_per_prompt"] == 1
    assert manifest["n_tokens"] == len(PROMPTS) * STEPS * tokens
    parts = [load_file(str(out / f"shard_{s['index']:05d}.safetensors"))
             for s in json.loads((out / "manifest.json").read_text())["shards"]]  # fmt: skip
    acts = torch.cat([p["activations"] for p in parts])
    step = torch.cat([p["step"] for p in parts])
    prompt = torch.cat([p["prompt"] for p in parts])
    expected = image_tokens(model, hook, site)
    assert len(expected) == len(PROMPTS) * STEPS
    for (i, s), want in expected.items():
        got = acts[(prompt == i) & (step == s)]
        # Batches of 2 against 1 prompt at a time: float rounding only.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
