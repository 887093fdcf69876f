"""Knowing the denoising step while the stock pipeline samples.

Hooks never count calls. :func:`track_denoising` puts a pre-hook on the UNet that reads the
``timestep`` the pipeline passes and finds its position in ``pipe.scheduler.timesteps``; it
also reads from the pipeline whether the batch is a classifier-free-guidance pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from saeuron.models.denoiser import denoiser


@dataclass
class DenoiseState:
    """What the pipeline is doing right now, as read from its own call."""

    step: int = -1
    """Index of the current timestep in ``scheduler.timesteps`` (-1 outside sampling)."""
    num_steps: int = 0
    timestep: float = float("nan")
    cfg: bool = False
    """True when the UNet batch is ``[uncond; cond]``."""


def _timestep_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | float | None:
    if "timestep" in kwargs:
        return kwargs["timestep"]
    return args[1] if len(args) > 1 else None


class DenoiseTracker:
    """Keeps a :class:`DenoiseState` up to date while ``pipe`` samples, until removed.

    A pre-hook on the denoiser reads each call's ``timestep`` and whether the pipeline runs
    classifier-free guidance. :func:`track_denoising` is the same as a context manager.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.state = DenoiseState()
        self._handle = denoiser(pipe).register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        state, pipe = self.state, self.pipe
        t = _timestep_arg(args, kwargs)
        timesteps = pipe.scheduler.timesteps
        if t is None or timesteps is None or len(timesteps) == 0:
            state.step = -1
            return
        t_value = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        state.timestep = t_value
        state.num_steps = len(timesteps)
        state.step = int((timesteps.float().cpu() - t_value).abs().argmin())
        state.cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))

    def remove(self) -> None:
        self._handle.remove()


@contextmanager
def track_denoising(pipe: Any) -> Iterator[DenoiseState]:
    """Keep a :class:`DenoiseState` up to date while ``pipe`` samples."""
    tracker = DenoiseTracker(pipe)
    try:
        yield tracker.state
    finally:
        tracker.remove()
