"""Token layout at a hookpoint: reading a block's tensors, one token per position.

A UNet block gives ``[B, C, H, W]`` (one token per spatial position); a transformer block
gives ``[B, T, C]``. The conditional rows of a classifier-free-guidance batch
``[uncond; cond]`` are the second half.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

CFG_HALVES = ("cond", "both")
"""``cond``: the conditional half of a CFG batch; ``both``: every row."""
ACTIVATION_SITES = ("output", "update")
"""``output``: the block's output (residual stream, the paper); ``update``: output - input
(sdxl-unbox)."""


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
