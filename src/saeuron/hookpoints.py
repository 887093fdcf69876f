"""Where the SAE reads: resolving hookpoints, knowing the denoising step, token layout.

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

from .config import ConfigError

CFG_HALVES = ("cond", "both")
"""``cond``: the conditional half of a CFG batch; ``both``: every row."""
ACTIVATION_SITES = ("output", "update")
"""``output``: the block's output (residual stream, the paper); ``update``: output - input
(sdxl-unbox)."""


def resolve_module(pipe: Any, hookpoint: str) -> nn.Module:
    """``unet.up_blocks.1.attentions.1`` -> that module of ``pipe`` (a bare UNet path works too)."""
    head, _, rest = hookpoint.partition(".")
    root = getattr(pipe, head, None)
    if isinstance(root, nn.Module):
        path = rest
    else:
        root, path = pipe.unet, hookpoint
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise ConfigError(
            "hookpoint",
            f"{hookpoint!r} is not a module of this pipeline; attention blocks here: "
            + ", ".join(list_hookpoints(pipe)[:12]),
        ) from None


def list_hookpoints(pipe: Any) -> list[str]:
    """Names of the UNet's transformer blocks, the places SAEs are trained on."""
    return [
        f"unet.{name}"
        for name, module in pipe.unet.named_modules()
        if type(module).__name__ in ("Transformer2DModel", "SpatialTransformer")
    ]


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


def output_tensor(output: Any) -> Tensor:
    """The hidden states out of a diffusers block (tuple, output dataclass or tensor)."""
    if torch.is_tensor(output):
        return output
    if isinstance(output, tuple):
        return output[0]
    return output.sample


def replace_output(output: Any, new: Tensor) -> Any:
    if torch.is_tensor(output):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    output.sample = new
    return output


def input_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, H, W]`` or ``[B, T, C]`` -> ``[B, T, C]``: one token per position."""
    if x.ndim == 4:
        b, c, h, w = x.shape
        return x.permute(0, 2, 3, 1).reshape(b, h * w, c)
    if x.ndim == 3:
        return x
    raise ValueError(f"cannot read tokens from a tensor of shape {tuple(x.shape)}")


def from_tokens(tokens: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`to_tokens` for a tensor shaped like ``like``."""
    if like.ndim == 4:
        b, c, h, w = like.shape
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return tokens.reshape(like.shape)


def conditional_rows(batch: int, cfg: bool, half: str) -> slice:
    """Rows of the UNet batch to act on: the conditional half under CFG, else all."""
    if half == "both" or not cfg:
        return slice(0, batch)
    if batch % 2:
        raise RuntimeError(f"CFG batch of odd size {batch}: cannot split into [uncond; cond]")
    return slice(batch // 2, batch)
