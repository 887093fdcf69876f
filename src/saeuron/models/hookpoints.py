"""Where the SAE reads: hookpoints are module paths of the pipeline, e.g.
``unet.up_blocks.1.attentions.1``."""

from __future__ import annotations

from typing import Any

from torch import nn

from saeuron.models.denoiser import denoiser, denoiser_name
from saeuron.utils.errors import ConfigError


def resolve_module(pipe: Any, hookpoint: str) -> nn.Module:
    """``unet.up_blocks.1.attentions.1`` -> that module of ``pipe`` (a path inside the
    denoiser without its first name works too)."""
    head, _, rest = hookpoint.partition(".")
    root = getattr(pipe, head, None)
    if isinstance(root, nn.Module):
        path = rest
    else:
        root, path = denoiser(pipe), hookpoint
    try:
        return root.get_submodule(path) if path else root
    except AttributeError:
        raise ConfigError(
            "hookpoint",
            f"{hookpoint!r} is not a module of this pipeline; attention blocks here: "
            + ", ".join(list_hookpoints(pipe)[:12]),
        ) from None


def list_hookpoints(pipe: Any) -> list[str]:
    """Names of the denoiser's transformer blocks, the places SAEs are trained on."""
    name = denoiser_name(pipe)
    return [
        f"{name}.{path}"
        for path, module in denoiser(pipe).named_modules()
        if type(module).__name__ in ("Transformer2DModel", "SpatialTransformer")
    ]
