"""The erase hook on transformer blocks (SD3 joint, FLUX double and single, PixArt): an
erasure changes the image, edits only the image tokens of the conditional rows, and an
erasure that edits nothing leaves the image bit-identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeuron.erasure.erase import erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.hookpoints import resolve_module
from saeuron.sae import Sae, SaeConfig

CASES = [
    ("tiny_sd3", "transformer.transformer_blocks.1", True),
    ("tiny_sd3", "transformer.transformer_blocks.2", True),  # SD3's context-pre-only block
    ("tiny_flux", "transformer.transformer_blocks.1", False),
    ("tiny_flux", "transformer.single_transformer_blocks.0", False),
    ("tiny_pixart", "transformer.transformer_blocks.1", True),
]
"""(pipeline, hookpoint, whether the denoiser batch is [uncond; cond] at guidance 4)."""
IDS = [f"{f.removeprefix('tiny_')}-{h.split('.', 1)[1]}" for f, h, _ in CASES]


@pytest.fixture(scope="module")
def sae() -> Sae:
    torch.manual_seed(3)
    return Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))


def many_latents() -> ConceptFeatures:
    # A quarter of the latents with threshold 0: certain to fire on random weights.
    return ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), mean=1.0, threshold=0.0)


def sample(pipe, steps: int = 2) -> np.ndarray:
    out = pipe(["a cat", "a dog"], num_inference_steps=steps, guidance_scale=4.0,
               generator=[torch.Generator().manual_seed(i) for i in range(2)],
               output_type="np")  # fmt: skip
    return np.asarray(out.images)


@pytest.mark.parametrize(("fixture", "hook", "guidance"), CASES, ids=IDS)
def test_erasing_nothing_is_bit_identical(fixture, hook, guidance, sae, request) -> None:
    pipe = request.getfixturevalue(fixture)
    base = sample(pipe)
    silent = ConceptFeatures.from_latents("x", [1, 2, 3], mean=1.0, threshold=1e9)
    with erase(pipe, sae, silent, multiplier=-50.0, hookpoint=hook) as handle:
        untouched = sample(pipe)
    assert handle.calls == 2 and handle.edited_tokens == 0
    assert np.array_equal(base, untouched)


@pytest.mark.parametrize(("fixture", "hook", "guidance"), CASES, ids=IDS)
def test_erasure_edits_image_tokens_of_the_conditional_rows_only(
    fixture, hook, guidance, sae, request
) -> None:
    pipe = request.getfixturevalue(fixture)
    module = resolve_module(pipe, hook)
    before: list = []
    after: list = []

    def keep(store):
        def record(m, args, kwargs, output) -> None:
            if len(store) == 0:  # the first step
                store.append(output if torch.is_tensor(output) else tuple(output))

        return record

    base = sample(pipe)
    first = module.register_forward_hook(keep(before), with_kwargs=True)
    try:
        with erase(pipe, sae, many_latents(), multiplier=-20.0, hookpoint=hook) as handle:
            second = module.register_forward_hook(keep(after), with_kwargs=True)
            try:
                erased = sample(pipe)
            finally:
                second.remove()
    finally:
        first.remove()
    assert not np.array_equal(base, erased)
    rows = 4 if guidance else 2
    # Every row of the conditional half: 2 prompts x 64 (PixArt: 256) image tokens per step.
    assert handle.edited_tokens > 0
    if torch.is_tensor(before[0]):  # PixArt: the output is the image tokens
        text_before = text_after = None
        image_before, image_after = before[0], after[0]
    else:  # (text stream, image stream)
        (text_before, image_before), (text_after, image_after) = before[0], after[0]
    assert image_before.shape[0] == rows and image_before.ndim == 3
    if text_before is not None:
        assert text_after is text_before or torch.equal(text_after, text_before)
    else:
        assert text_after is None
    changed = (image_after != image_before).flatten(1).any(dim=1)
    expected = [False, False, True, True] if guidance else [True, True]
    assert changed.tolist() == expected


def test_both_halves_are_edited_on_request(tiny_sd3, sae) -> None:
    hook = "transformer.transformer_blocks.1"
    module = resolve_module(tiny_sd3, hook)
    outputs: list = []
    with erase(tiny_sd3, sae, many_latents(), multiplier=-20.0, hookpoint=hook,
               guidance_half="both"):  # fmt: skip
        handle = module.register_forward_hook(lambda m, a, o: outputs.append(o[1]))
        try:
            sample(tiny_sd3, steps=1)
        finally:
            handle.remove()
    plain: list = []
    handle = module.register_forward_hook(lambda m, a, o: plain.append(o[1]))
    try:
        sample(tiny_sd3, steps=1)
    finally:
        handle.remove()
    assert (outputs[0] != plain[0]).flatten(1).any(dim=1).tolist() == [True] * 4
