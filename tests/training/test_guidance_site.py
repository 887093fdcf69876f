"""The 'guidance' activation site (conditional minus unconditional output) and statistics
read straight from a labelled capture."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saeuron.erasure.erase import erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tiny import build_tiny_sd
from saeuron.models.tokens import site_rows
from saeuron.sae import Sae, SaeConfig
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.capture_stats import read_label_rows, stats_from_capture
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"
PROMPTS = ["a cat", "a dog on a sofa", "a red car", "a black cat"]
D_IN, TOKENS = 32, 64


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(5)
    sae = Sae(SaeConfig(d_in=D_IN, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = HOOK
    return sae


def capture(tmp_path: Path, **changes) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    settings = dict(model="tiny-sd", hookpoint=HOOK, prompts=str(prompts), out=str(tmp_path / "c"),
                    num_inference_steps=3, batch_size=2, dtype="float32")  # fmt: skip
    settings.update(changes)
    run_cache(CacheConfig(**settings))
    return Path(settings["out"])


def shards(out: Path) -> dict[str, torch.Tensor]:
    manifest = json.loads((out / "manifest.json").read_text())
    names = [f"shard_{s['index']:05d}.safetensors" for s in manifest["shards"]]
    parts = [load_file(str(out / name)) for name in names]
    return {k: torch.cat([p[k] for p in parts]) for k in ("activations", "step", "prompt")}


def test_site_rows_takes_the_difference_of_the_guidance_halves() -> None:
    out = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    diff, rows = site_rows(out, None, "guidance", guidance=True, half="cond")
    assert torch.equal(diff, out[2:] - out[:2]) and rows == slice(2, 4)
    assert site_rows(out, None, "guidance", guidance=False, half="cond") is None
    plain, rows = site_rows(out, None, "output", guidance=True, half="cond")
    assert torch.equal(plain, out[2:])


def test_guidance_capture_stores_cond_minus_uncond(tmp_path: Path) -> None:
    # The pipeline's own scheduler and an explicit scale, so the hand-run below is the same.
    out = capture(tmp_path, activation_site="guidance", limit=2, scheduler="pipeline",
                  guidance_scale=9.0)  # fmt: skip
    got = shards(out)
    pipe = build_tiny_sd()
    module = pipe.unet.get_submodule(HOOK.removeprefix("unet."))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o[0].detach().clone()))
    pipe(PROMPTS[:2], num_inference_steps=3, guidance_scale=9.0,
         generator=[torch.Generator().manual_seed(i) for i in range(2)], output_type="latent")
    handle.remove()
    # Rows [uncond x2; cond x2] per step; the stored token is cond - uncond, by (prompt, step).
    expected = torch.cat([
        (seen[s][2 + j] - seen[s][j]).permute(1, 2, 0).reshape(-1, D_IN)
        for j in range(2) for s in range(3)
    ])  # fmt: skip
    torch.testing.assert_close(got["activations"], expected, rtol=0, atol=1e-6)
    assert json.loads((out / "manifest.json").read_text())["activation_site"] == "guidance"


def test_guidance_capture_needs_a_guidance_batch(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    for bad in ({"guidance_scale": 1.0}, {"guidance_half": "both"}):
        with pytest.raises(ConfigError, match="^activation_site:"):
            CacheConfig(model="tiny-sd", hookpoint=HOOK, prompts=str(prompts),
                        out=str(tmp_path / "x"), activation_site="guidance", **bad)  # fmt: skip


def test_guidance_erase_reads_the_difference_and_edits_the_conditional_rows(
    tiny_sd, sae
) -> None:
    idx = [0, 4, 8, 12]
    features = ConceptFeatures.from_latents("cat", idx, mean=1.0, threshold=0.0)
    module = resolve_module(tiny_sd, HOOK)
    before: list[torch.Tensor] = []
    after: list[torch.Tensor] = []
    first = module.register_forward_hook(lambda m, i, o: before.append(o[0].detach().clone()))
    try:
        with erase(tiny_sd, sae, features, multiplier=-3.0, activation_site="guidance") as h:
            second = module.register_forward_hook(
                lambda m, i, o: after.append(o[0].detach().clone())
            )
            tiny_sd("a cat", num_inference_steps=1, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(0), output_type="np")  # fmt: skip
            second.remove()
    finally:
        first.remove()
    x, y = before[0], after[0]
    assert h.edited_tokens > 0
    assert torch.equal(x[:1], y[:1]), "the unconditional row is left alone"
    tokens = (x[1:] - x[:1]).permute(0, 2, 3, 1).reshape(-1, D_IN)
    with torch.no_grad():
        a = sae.encode_dense(tokens)[:, idx]
        a_new = torch.where(a > 0, -3.0 * a, a)
        expected = x[1:].permute(0, 2, 3, 1).reshape(-1, D_IN) + (a_new - a) @ sae.W_dec[idx]
    torch.testing.assert_close(y[1:].permute(0, 2, 3, 1).reshape(-1, D_IN), expected,
                               atol=1e-5, rtol=1e-5)  # fmt: skip
    # Without CFG there is no difference to read: nothing is edited, the image is unchanged.
    base = tiny_sd("a cat", num_inference_steps=2, guidance_scale=1.0,
                   generator=torch.Generator().manual_seed(0), output_type="np").images
    with erase(tiny_sd, sae, features, multiplier=-3.0, activation_site="guidance") as h2:
        same = tiny_sd("a cat", num_inference_steps=2, guidance_scale=1.0,
                       generator=torch.Generator().manual_seed(0), output_type="np").images
    assert h2.edited_tokens == 0 and np.array_equal(base, same)


def test_stats_from_capture_match_a_hand_computation(tmp_path: Path, sae) -> None:
    out = capture(tmp_path)
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "animal"])
        for prompt, animal in zip(PROMPTS, ["cat", "dog", "", "cat"]):
            writer.writerow([prompt, animal])
    stats = stats_from_capture(out, sae, read_label_rows(labels), "animal")
    assert sorted(stats) == ["cat", "dog"]
    assert stats["cat"].n_prompts == 2 and stats["dog"].n_prompts == 1
    data = shards(out)
    with torch.no_grad():
        dense = sae.encode_dense(data["activations"].float())
    for name, prompts in (("cat", [0, 3]), ("dog", [1])):
        for step in range(3):
            mask = torch.isin(data["prompt"], torch.tensor(prompts)) & (data["step"] == step)
            torch.testing.assert_close(stats[name].mean[step], dense[mask].mean(0),
                                       atol=1e-5, rtol=1e-5)  # fmt: skip
            torch.testing.assert_close(stats[name].active_frac[step],
                                       (dense[mask] > 0).float().mean(0), atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="^labels:"):
        stats_from_capture(out, sae, read_label_rows(labels)[:3], "animal")
    with pytest.raises(ConfigError, match="^kind:"):
        stats_from_capture(out, sae, read_label_rows(labels), "colour")
