"""Loading diffusion pipelines by name: tiny test models, bundled models, folders, hub ids."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError
from .tiny import TINY_MODELS, build_tiny

log = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

BUNDLED_MODELS: dict[str, Path] = {
    "minicanvas": Path(__file__).parent / "data" / "minicanvas",
}
"""Models shipped inside the package: name -> folder in ``save_pretrained`` layout. The one
place to register a bundled model; a name whose folder is absent is known but not shipped."""


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` picks the best available accelerator: CUDA, then MPS, then the CPU."""
    if device is not None:
        try:
            return torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(
                "device", f"got {device!r}; expected e.g. 'cpu', 'cuda', 'cuda:1', 'mps'"
            ) from err
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _pretrained_kwargs(model: str) -> dict[str, Any]:
    """SD 1.x folders declare a safety checker; turning it off there (and only there) avoids
    both a download and diffusers' warning about unexpected kwargs on other pipelines."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(model)
    except Exception:  # from_pretrained below reports the real problem
        return {}
    if "safety_checker" in index:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


def load_pipeline(
    model: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Any:
    """A diffusers pipeline on ``device`` with its progress bar off (we run it internally).

    ``model`` is ``tiny-sd``/``tiny-sdxl`` (random-weight test models), a bundled model name
    (:data:`BUNDLED_MODELS`), a local ``save_pretrained`` folder or a Hugging Face hub id.
    """
    target = resolve_device(device)
    if model in TINY_MODELS:
        pipe = build_tiny(model)
    else:
        source: str = model
        if model in BUNDLED_MODELS:
            folder = BUNDLED_MODELS[model]
            if not (folder / "model_index.json").is_file():
                raise ConfigError(
                    "model",
                    f"the bundled model {model!r} is not shipped in this install yet "
                    f"(expected at {folder}); use a local folder, a hub id or one of "
                    f"{', '.join(TINY_MODELS)}",
                )
            source = str(folder)
        elif not Path(model).exists() and not _HUB_ID.fullmatch(model):
            raise ConfigError(
                "model",
                f"got {model!r}: neither a local folder nor a hub id (owner/name); also "
                f"allowed: {', '.join([*BUNDLED_MODELS, *TINY_MODELS])}",
            )
        from diffusers import DiffusionPipeline

        if dtype is None and target.type == "cpu":
            # Folders may store fp16 weights (the bundled ones do, to stay small); CPU
            # kernels want float32.
            dtype = torch.float32
        log.info("loading pipeline %s", source)
        kwargs = _pretrained_kwargs(source)
        if dtype is not None:
            kwargs["torch_dtype"] = dtype
        pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    # Casting only when needed: diffusers warns on every dtype cast through ``to()``.
    pipe = pipe.to(target) if dtype in (None, pipe.dtype) else pipe.to(target, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# Bundled models carry their own SAEs and concept features beside the pipeline:
#   <folder>/saes/<hookpoint>/{cfg.json,sae.safetensors}
#   <folder>/features/<hookpoint>/<concept>.{safetensors,json}
BUNDLED_DEFAULT_HOOKPOINT: dict[str, str] = {"minicanvas": "unet.up_blocks.1.attentions.1"}


def _bundled_hookpoint(model: str, concept: str | None) -> str:
    if model == "minicanvas" and concept is not None:
        from .minicanvas.assets import concept_hookpoint

        try:
            return concept_hookpoint(concept)
        except ConfigError:  # a free-text concept: the object block
            pass
    return BUNDLED_DEFAULT_HOOKPOINT[model]


def bundled_sae(
    model: str, hookpoint: str | None = None, concept: str | None = None
) -> tuple[Path, str]:
    """The SAE folder and hookpoint a bundled model uses for ``concept`` unless told."""
    return BUNDLED_MODELS[model] / "saes", hookpoint or _bundled_hookpoint(model, concept)


def bundled_features(model: str, concept: str, hookpoint: str | None) -> Path | None:
    """Path (without suffix) of a concept's shipped features, or None if not shipped."""
    if model not in BUNDLED_MODELS:
        return None
    hookpoint = hookpoint or _bundled_hookpoint(model, concept)
    base = BUNDLED_MODELS[model] / "features" / hookpoint / concept.strip().lower()
    return base if base.with_suffix(".safetensors").is_file() else None
