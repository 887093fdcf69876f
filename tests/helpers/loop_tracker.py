"""A stand-in for the step tracker that reads the pipeline's loop position, for DiT tests.

The project's tracker (saeuron.models.denoising) maps the ``timestep`` the denoiser is
called with to a position in ``scheduler.timesteps`` and reads CFG from the pipeline's
``do_classifier_free_guidance`` property. Two DiT pipelines defeat that:

- FluxPipeline calls its transformer with ``timestep / 1000`` (a sigma in [0, 1]) while
  ``scheduler.timesteps`` run from 1000 down: every call maps to the last step.
- PixArtSigmaPipeline runs a ``[uncond; cond]`` batch but has no
  ``do_classifier_free_guidance`` property (its CFG is a local ``guidance_scale > 1``).

Until the tracker reads the loop position itself, the DiT tests swap this in with
:func:`use_loop_tracker`: the step is the number of ``scheduler.step`` calls since the
pipeline last called ``scheduler.set_timesteps``; CFG is the pipeline's property where it has
one, else the ``do_classifier_free_guidance`` argument its ``encode_prompt`` was called
with. Same interface (``DenoiseTracker(pipe).state``, ``.remove()``).
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pytest
import torch

from saeuron.models import denoising
from saeuron.models.denoiser import denoiser


def _init(self: denoising.DenoiseTracker, pipe: Any) -> None:
    self.pipe = pipe
    self.state = denoising.DenoiseState()
    scheduler = pipe.scheduler
    position = {"step": 0, "cfg": None}
    originals: dict[str, Any] = {}

    # Instance attributes shadow the class's methods for this pipeline only; trackers
    # nest (an eraser inside a capture), each restoring what it found.
    before = {
        "scheduler": {k: scheduler.__dict__.get(k) for k in ("set_timesteps", "step")},
        "pipe": pipe.__dict__.get("encode_prompt"),
    }
    originals["set_timesteps"] = scheduler.set_timesteps
    originals["step"] = scheduler.step
    originals["encode_prompt"] = pipe.encode_prompt

    # functools.wraps keeps the signatures pipelines inspect (retrieve_timesteps asks
    # set_timesteps whether it takes ``sigmas``).
    @functools.wraps(originals["set_timesteps"])
    def set_timesteps(*args: Any, **kwargs: Any) -> Any:
        position["step"] = 0
        return originals["set_timesteps"](*args, **kwargs)

    @functools.wraps(originals["step"])
    def step(*args: Any, **kwargs: Any) -> Any:
        out = originals["step"](*args, **kwargs)
        position["step"] += 1
        return out

    @functools.wraps(originals["encode_prompt"])
    def encode_prompt(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(originals["encode_prompt"]).bind_partial(*args, **kwargs)
        if "do_classifier_free_guidance" in bound.arguments:
            position["cfg"] = bool(bound.arguments["do_classifier_free_guidance"])
        return originals["encode_prompt"](*args, **kwargs)

    scheduler.set_timesteps, scheduler.step = set_timesteps, step
    pipe.encode_prompt = encode_prompt

    def pre_hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        timesteps = scheduler.timesteps
        state = self.state
        if timesteps is None or len(timesteps) == 0:
            state.step = -1
            return
        state.step = position["step"]
        state.num_steps = len(timesteps)
        state.timestep = float(timesteps[min(state.step, len(timesteps) - 1)])
        own = getattr(pipe, "do_classifier_free_guidance", None)
        state.cfg = bool(own) if own is not None else bool(position["cfg"])

    handle = denoiser(pipe).register_forward_pre_hook(pre_hook, with_kwargs=True)

    def remove() -> None:
        handle.remove()
        for name, old in before["scheduler"].items():
            if old is None:
                scheduler.__dict__.pop(name, None)
            else:
                scheduler.__dict__[name] = old
        if before["pipe"] is None:
            pipe.__dict__.pop("encode_prompt", None)
        else:
            pipe.__dict__["encode_prompt"] = before["pipe"]

    self._loop_remove = remove


def _remove(self: denoising.DenoiseTracker) -> None:
    self._loop_remove()


def use_loop_tracker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every DenoiseTracker (erase, capture, statistics) read the loop position."""
    monkeypatch.setattr(denoising.DenoiseTracker, "__init__", _init)
    monkeypatch.setattr(denoising.DenoiseTracker, "remove", _remove)


def tracked_steps(pipe: Any, **call: Any) -> list[tuple[int, bool]]:
    """(step, cfg) the tracker reports at each denoiser call of one pipeline call."""
    seen: list[tuple[int, bool]] = []
    with denoising.track_denoising(pipe) as state:
        handle = denoiser(pipe).register_forward_hook(
            lambda *a: seen.append((state.step, state.cfg))
        )
        try:
            with torch.no_grad():
                pipe(["a cat"], output_type="latent", **call)
        finally:
            handle.remove()
    return seen
