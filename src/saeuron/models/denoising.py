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


@contextmanager
def track_denoising(pipe: Any) -> Iterator[DenoiseState]:
    """Keep a :class:`DenoiseState` up to date while ``pipe`` samples."""
    state = DenoiseState()

    def pre_hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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

    handle = pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield state
    finally:
        handle.remove()
