"""Token layout at a hookpoint: where a block keeps the image tokens, one token per position.

Every hook that reads or edits a block (capture, statistics, the erasure) goes through here,
so what each block returns is known in one place:

- UNet attention blocks (``Transformer2DModel``) return ``[B, C, H, W]`` (in an output
  dataclass or a 1-tuple): one token per spatial position.
- PixArt's ``BasicTransformerBlock`` returns the image tokens ``[B, T, C]``.
- SD3's ``JointTransformerBlock`` (MMDiT) and FLUX's double-stream ``FluxTransformerBlock``
  return ``(encoder_hidden_states, hidden_states)``: text stream first, image stream second.
  SD3's last block returns ``None`` for the text stream.
- FLUX's single-stream ``FluxSingleTransformerBlock`` returns the same pair in diffusers
  releases whose block takes ``encoder_hidden_states`` (0.35 and later). Older releases
  concatenate text and image tokens into one sequence without telling the block where the
  text ends; there the layout is refused rather than guessed.

The SAE reads and edits the image tokens only; the text stream of a joint block passes
through untouched. Sequence outputs are taken as they come (``[B, T, C]``), with no spatial
reshape. The conditional rows of a classifier-free-guidance batch ``[uncond; cond]`` are
the second half.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

import torch
from torch import Tensor, nn

# Re-exported: the names live in the torch-free module that configs read.
from saeuron.models.sites import ACTIVATION_SITES as ACTIVATION_SITES
from saeuron.models.sites import GUIDANCE_HALVES as GUIDANCE_HALVES
from saeuron.models.sites import GUIDANCE_SITE
from saeuron.utils.errors import ConfigError


@dataclass(frozen=True)
class BlockLayout:
    """Where one kind of block keeps the image hidden states in what it returns."""

    name: str
    image_index: int
    """Position of the image hidden states when the block returns a tuple."""
    text_index: int | None = None
    """Position of the text stream in that tuple (joint blocks), left untouched."""

    def output(self, output: Any) -> Tensor:
        """The image hidden states out of the block."""
        if torch.is_tensor(output):
            return output
        if isinstance(output, tuple):
            return output[self.image_index]
        return output.sample

    def replace(self, output: Any, new: Tensor) -> Any:
        """``output`` with its image hidden states replaced by ``new``; the rest as it was."""
        if torch.is_tensor(output):
            return new
        if isinstance(output, tuple):
            parts = list(output)
            parts[self.image_index] = new
            return tuple(parts)
        output.sample = new
        return output

    def input(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
        """The image hidden states going into the block (every layout passes them first)."""
        return args[0] if args else kwargs["hidden_states"]


UNET_LAYOUT = BlockLayout("unet", image_index=0)
"""A tensor, the first element of a tuple or ``.sample``: UNet blocks and anything unlisted."""
SEQUENCE_LAYOUT = BlockLayout("sequence", image_index=0)
"""A ``[B, T, C]`` tensor of image tokens (PixArt)."""
JOINT_LAYOUT = BlockLayout("joint", image_index=1, text_index=0)
"""``(encoder_hidden_states, hidden_states)``: SD3 MMDiT and FLUX blocks."""

UNET_BLOCKS = ("Transformer2DModel", "SpatialTransformer")
"""UNet modules SAEs are trained on (SAeUron's ``unet.up_blocks.1.attentions.1``)."""
DIT_BLOCKS: dict[str, BlockLayout] = {
    "JointTransformerBlock": JOINT_LAYOUT,
    "FluxTransformerBlock": JOINT_LAYOUT,
    "FluxSingleTransformerBlock": JOINT_LAYOUT,
    "BasicTransformerBlock": SEQUENCE_LAYOUT,
}
"""Blocks of transformer denoisers (SD3, FLUX, PixArt), by class name."""


@cache
def _layout_of(cls: type) -> BlockLayout:
    name = cls.__name__
    layout = DIT_BLOCKS.get(name, UNET_LAYOUT)
    if name == "FluxSingleTransformerBlock":
        params = inspect.signature(cls.forward).parameters
        if "encoder_hidden_states" not in params:
            raise ConfigError(
                "hookpoint",
                "this diffusers release's FluxSingleTransformerBlock returns text and image "
                "tokens as one sequence without the text length; hook a "
                "transformer.transformer_blocks.N block or upgrade diffusers (0.35 or later)",
            )
    return layout


def block_layout(module: nn.Module) -> BlockLayout:
    """The output layout of ``module``'s class; ConfigError if it cannot be read safely."""
    return _layout_of(type(module))


def output_tensor(module: nn.Module, output: Any) -> Tensor:
    """The image hidden states ``module`` returned (see :func:`block_layout`)."""
    return block_layout(module).output(output)


def replace_output(module: nn.Module, output: Any, new: Tensor) -> Any:
    """``module``'s output with the image hidden states replaced; text stream untouched."""
    return block_layout(module).replace(output, new)


def input_tensor(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """The image hidden states passed into ``module``."""
    return block_layout(module).input(args, kwargs)


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


def conditional_rows(batch: int, guidance: bool, half: str) -> slice:
    """Rows of the denoiser batch to act on: the conditional half under CFG, else all."""
    if half == "both" or not guidance:
        return slice(0, batch)
    if batch % 2:
        raise RuntimeError(f"CFG batch of odd size {batch}: cannot split into [uncond; cond]")
    return slice(batch // 2, batch)


def site_rows(
    out: Tensor, inp: Tensor | None, site: str, guidance: bool, half: str
) -> tuple[Tensor, slice] | None:
    """What an SAE at ``site`` reads from a block call, and the output rows it belongs to.

    ``None`` for the ``guidance`` site without a CFG batch: there is no unconditional row
    to take the difference with.
    """
    if site == GUIDANCE_SITE:
        if not guidance:
            return None
        if out.shape[0] % 2:
            raise RuntimeError(f"CFG batch of odd size {out.shape[0]}: cannot split it")
        n = out.shape[0] // 2
        return out[n:] - out[:n], slice(n, out.shape[0])
    rows = conditional_rows(out.shape[0], guidance, half)
    if site == "update":
        if inp is None:
            raise ValueError("the update site needs the block input")
        return (out - inp)[rows], rows
    return out[rows], rows
