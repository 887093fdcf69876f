"""Where the SAE reads: hookpoints are module paths of the pipeline, e.g.
``unet.up_blocks.1.attentions.1`` (Stable Diffusion) or ``transformer.transformer_blocks.7``
(SD3, FLUX, PixArt)."""

from __future__ import annotations

from typing import Any

from torch import nn

from saeuron.models.denoiser import denoiser, denoiser_name
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.tokens import DIT_BLOCKS, UNET_BLOCKS, block_layout
from saeuron.utils.errors import ConfigError


def resolve_module(pipe: Any, hookpoint: str) -> nn.Module:
    """``unet.up_blocks.1.attentions.1`` -> that module of ``pipe`` (a path inside the
    denoiser without its first name works too). A block whose output layout cannot be read
    is refused here, before any sampling."""
    head, _, rest = hookpoint.partition(".")
    root = getattr(pipe, head, None)
    if isinstance(root, nn.Module):
        path = rest
    else:
        root, path = denoiser(pipe), hookpoint
    encoder = prompt_encoder_of(hookpoint)
    if encoder and not path:
        # The encoder returns a model output, not token embeddings: its layers do.
        raise ConfigError(
            "hookpoint", f"got {hookpoint!r}; name a layer inside it, e.g. "
            f"'{head}.final_layer_norm' (the output Stable Diffusion 1.x reads)"
        )  # fmt: skip
    try:
        module = root.get_submodule(path) if path else root
    except AttributeError:
        found = _text_model_alias(root, path) if encoder else None
        if found is None:
            raise ConfigError(
                "hookpoint",
                f"{hookpoint!r} is not a module of this pipeline; blocks here: "
                + _shown(list_hookpoints(pipe)),
            ) from None
        module = found
    block_layout(module)
    return module


def _text_model_alias(root: nn.Module, path: str) -> nn.Module | None:
    """A CLIP text encoder's module under the other release's name: transformers 4 nests
    the layers in ``text_model`` (``text_encoder.text_model.final_layer_norm``), 5 does not
    (``text_encoder.final_layer_norm``). Published hookpoints use either."""
    prefix = "text_model."
    other = path.removeprefix(prefix) if path.startswith(prefix) else prefix + path
    try:
        return root.get_submodule(other)
    except AttributeError:
        return None


def _shown(names: list[str], most: int = 12) -> str:
    if len(names) <= most:
        return ", ".join(names)
    return ", ".join(names[:most]) + f", ... ({len(names)} in all)"


def list_hookpoints(pipe: Any) -> list[str]:
    """Names of the denoiser's blocks, the places SAEs are trained on: a UNet's attention
    blocks (``Transformer2DModel``) or a transformer's blocks, one entry per block of its
    block lists (``transformer_blocks.N``, FLUX's ``single_transformer_blocks.N``)."""
    return block_names(denoiser_name(pipe), denoiser(pipe))


def block_names(name: str, root: nn.Module) -> list[str]:
    """:func:`list_hookpoints` of a denoiser ``root`` named ``name`` (``unet``, ``transformer``)."""
    found = []
    for path, module in root.named_modules():
        kind = type(module).__name__
        # A DiT's blocks sit directly in a top-level list ("transformer_blocks.3"); the
        # same classes nested inside a UNet's attention blocks are not separate hookpoints.
        if kind in UNET_BLOCKS or (kind in DIT_BLOCKS and path.count(".") == 1):
            found.append(f"{name}.{path}")
    return found
