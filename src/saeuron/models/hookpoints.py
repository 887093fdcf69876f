"""Where the SAE reads: hookpoints are module paths of the pipeline, e.g.
``unet.up_blocks.1.attentions.1``."""

from __future__ import annotations

from typing import Any

from torch import nn

from saeuron.utils.errors import ConfigError


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
