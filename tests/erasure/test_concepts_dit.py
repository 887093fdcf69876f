"""Concept statistics on transformer blocks: the image tokens of the conditional rows, SAE
encoded and averaged, as a naive computation gets them."""

from __future__ import annotations

import pytest
import torch

from saeuron.erasure.concepts.stats import collect_stats
from saeuron.models.hookpoints import resolve_module
from saeuron.sae import Sae, SaeConfig

STEPS = 3
CASES = [
    ("tiny_sd3", "transformer.transformer_blocks.1", "output", True),
    ("tiny_flux", "transformer.transformer_blocks.0", "update", False),
    ("tiny_pixart", "transformer.transformer_blocks.0", "output", True),
]


@pytest.mark.parametrize(("fixture", "hook", "site", "guidance"), CASES)
def test_dit_stats_match_a_naive_computation(fixture, hook, site, guidance, request) -> None:
    pipe = request.getfixturevalue(fixture)
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    prompt, seed = "a photo of a cat", 5
    seen: list[torch.Tensor] = []

    def record(m, args, kwargs, output) -> None:
        image = output if torch.is_tensor(output) else output[1]
        before = args[0] if args else kwargs["hidden_states"]
        seen.append((image - before if site == "update" else image).detach().clone())

    handle = resolve_module(pipe, hook).register_forward_hook(record, with_kwargs=True)
    try:
        pipe(prompt, num_inference_steps=STEPS, guidance_scale=4.0,
             generator=torch.Generator("cpu").manual_seed(seed), output_type="latent")  # fmt: skip
    finally:
        handle.remove()
    got = collect_stats(pipe, sae, [prompt], concept="cat", hookpoint=hook,
                        num_inference_steps=STEPS, guidance_scale=4.0, seed=seed,
                        activation_site=site, progress=False)  # fmt: skip
    assert got.mean.shape == (STEPS, sae.num_latents) and got.steps == list(range(STEPS))
    assert len(seen) == STEPS
    for step, x in enumerate(seen):
        assert x.shape[0] == (2 if guidance else 1)
        dense = sae.encode_dense(x[-1])  # the conditional row's [tokens, 32], as it comes
        torch.testing.assert_close(got.mean[step], dense.mean(0), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(got.active_frac[step], (dense > 0).float().mean(0))
    assert (got.active_frac > 0).any()
