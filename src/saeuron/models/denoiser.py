"""The pipeline's denoiser: the UNet of Stable Diffusion 1.x/2.x/XL, the transformer of
SD3, FLUX and PixArt. Library code reaches it through here, never through ``pipe.unet``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from saeuron.utils.errors import ConfigError

DENOISER_NAMES = ("unet", "transformer")
"""Attribute names diffusers pipelines give their denoiser, in the order they are tried."""


def denoiser_name(pipe: Any) -> str:
    for name in DENOISER_NAMES:
        if isinstance(getattr(pipe, name, None), nn.Module):
            return name
    raise ConfigError(
        "model",
        f"{type(pipe).__name__} has no denoiser ({' or '.join(DENOISER_NAMES)}); saeuron "
        "edits diffusion pipelines built on one",
    )


def denoiser(pipe: Any) -> nn.Module:
    """``pipe.unet`` or ``pipe.transformer``."""
    return getattr(pipe, denoiser_name(pipe))


def denoiser_device(pipe: Any) -> torch.device:
    """Where the denoiser's weights are (the first parameter's device)."""
    return next(denoiser(pipe).parameters()).device
