"""The tiny transformer pipelines: real module names and block layouts, deterministic."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.steps import tracked_steps

from saeuron.models.hookpoints import list_hookpoints, resolve_module
from saeuron.models.tokens import output_tensor

DITS = ["tiny_sd3", "tiny_flux", "tiny_pixart"]
SIDE = {"tiny_sd3": 32, "tiny_flux": 32, "tiny_pixart": 256}
TOKENS = {"tiny_sd3": 64, "tiny_flux": 64, "tiny_pixart": 256}
CFG_ROWS = {"tiny_sd3": 2, "tiny_flux": 1, "tiny_pixart": 2}
"""Denoiser rows per prompt at guidance 4: FLUX embeds its guidance, no CFG batch."""


def _sample(pipe, seed: int) -> np.ndarray:
    out = pipe(["a cat"], num_inference_steps=2, guidance_scale=4.0,
               generator=[torch.Generator().manual_seed(seed)], output_type="np")  # fmt: skip
    return np.asarray(out.images)


@pytest.mark.parametrize("fixture", DITS)
def test_tiny_dits_sample_deterministically(fixture, request) -> None:
    pipe = request.getfixturevalue(fixture)
    first, again, other = _sample(pipe, 0), _sample(pipe, 0), _sample(pipe, 1)
    assert first.shape == (1, SIDE[fixture], SIDE[fixture], 3)
    assert np.isfinite(first).all()
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("fixture", DITS)
def test_every_block_sees_the_image_tokens_of_each_row(fixture, request) -> None:
    pipe = request.getfixturevalue(fixture)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        def hook(module, args, kwargs, output) -> None:
            shapes.setdefault(name, tuple(output_tensor(module, output).shape))

        return hook

    handles = [
        resolve_module(pipe, name).register_forward_hook(record(name), with_kwargs=True)
        for name in list_hookpoints(pipe)
    ]
    try:
        _sample(pipe, 0)
    finally:
        for handle in handles:
            handle.remove()
    width = 32
    assert shapes == {
        name: (CFG_ROWS[fixture], TOKENS[fixture], width) for name in list_hookpoints(pipe)
    }


@pytest.mark.parametrize("fixture", [*DITS, "tiny_sd"])
def test_the_step_tracker_reads_dit_loops(fixture, request) -> None:
    # FLUX calls its transformer with timestep / 1000 and has no CFG batch; PixArt has no
    # do_classifier_free_guidance property (CFG is read from its encode_prompt call).
    pipe = request.getfixturevalue(fixture)
    guidance = fixture != "tiny_flux"
    assert tracked_steps(pipe, num_inference_steps=3, guidance_scale=4.0) == [
        (0, guidance), (1, guidance), (2, guidance)
    ]
    assert tracked_steps(pipe, num_inference_steps=2, guidance_scale=1.0) == [
        (0, False), (1, False)
    ]
    # The tracker leaves the pipeline's own methods in place once removed.
    assert "encode_prompt" not in pipe.__dict__

