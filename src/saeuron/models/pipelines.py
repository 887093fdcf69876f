"""Loading diffusion pipelines by name: tiny test models, bundled models, folders, hub ids."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from saeuron.models.bundles import bundle_names
from saeuron.models.resolve import ModelArg, ResolvedModel, resolve_model
from saeuron.models.tiny import TINY_MODELS, build_tiny
from saeuron.utils.devices import resolve_device
from saeuron.utils.errors import ConfigError
from saeuron.utils.files import MODEL_INDEX
from saeuron.utils.hub import bounded_timeouts, is_hub_id, unavailable, usable_offline

log = logging.getLogger(__name__)


def model_names() -> list[str]:
    """Names that load without a path or hub id: bundled models and tiny test models."""
    return [*bundle_names(), *TINY_MODELS]


def check_model(resolved: ResolvedModel, setting: str = "model") -> None:
    """Refuse, before anything loads, a model that is neither a name, a folder nor a hub id."""
    model = resolved.name
    if model in TINY_MODELS:
        return
    bundle = resolved.bundle
    if bundle is not None:
        if not bundle.shipped:
            raise ConfigError(
                setting,
                f"the bundled model {model!r} is not built in this install (no pipeline in "
                f"{bundle.folder}); use a local folder, a hub id or one of "
                f"{', '.join(TINY_MODELS)}",
            )
        return
    if Path(model).exists():
        if not Path(model).is_dir():
            raise ConfigError(setting, f"{model} is a file; expected a diffusers folder")
        return
    if not is_hub_id(model):
        raise ConfigError(
            setting,
            f"got {model!r}: neither a local folder nor a hub id (owner/name); also "
            f"allowed: {', '.join(model_names())}",
        )


def _pretrained_kwargs(source: str, cached_only: bool = False) -> dict[str, Any]:
    """SD 1.x folders declare a safety checker; turning it off there (and only there) avoids
    both a download and diffusers' warning about unexpected kwargs on other pipelines."""
    try:
        index = DiffusionPipeline.load_config(source, local_files_only=cached_only)
    except Exception:  # noqa: BLE001 - from_pretrained below reports the real problem
        return {}
    if "safety_checker" in index:
        return {"safety_checker": None, "requires_safety_checker": False}
    return {}


@contextmanager
def _no_loading_bars() -> Iterator[None]:
    """diffusers and transformers each draw a bar while reading a folder (components, then
    weights): noise beside the job's own bar. Hub downloads keep theirs (huggingface_hub's)."""
    libraries = (diffusers_logging, transformers_logging)
    were = [lib.is_progress_bar_enabled() for lib in libraries]
    for lib in libraries:
        lib.disable_progress_bar()
    try:
        yield
    finally:
        for lib, was in zip(libraries, were):
            if was:
                lib.enable_progress_bar()


def load_pipeline(
    model: ModelArg, device: str | torch.device | None = None, dtype: torch.dtype | None = None
) -> Any:
    """A diffusers pipeline on ``device`` with its progress bar off (we run it internally).

    ``model`` is ``tiny-sd``/``tiny-sdxl`` (random-weight test models), a bundled model name,
    a local ``save_pretrained`` folder or a Hugging Face hub id, or a model
    :func:`~saeuron.models.resolve.resolve_model` already resolved (not looked up again). An
    uncached hub id while offline fails at once with a one-line error naming the model.
    """
    target = resolve_device(device)
    # A public entry point: a name is resolved here, once; a resolved model is used as it is.
    resolved = resolve_model(model)
    check_model(resolved)
    if resolved.name in TINY_MODELS:
        pipe = build_tiny(resolved.name)
    else:
        source = resolved.source
        if dtype is None and target.type == "cpu":
            # Folders may store fp16 weights (the bundled ones do, to stay small); CPU
            # kernels want float32.
            dtype = torch.float32
        log.info("loading pipeline %s", source)
        cached_only = False
        if is_hub_id(source):
            bounded_timeouts()
            # Before any request that huggingface_hub would retry for half a minute.
            cached_only = usable_offline(source, "model", allow_patterns=[MODEL_INDEX])
        kwargs = _pretrained_kwargs(source, cached_only)
        if dtype is not None:
            kwargs["dtype"] = dtype
        if cached_only:
            kwargs["local_files_only"] = True
        try:
            with _no_loading_bars():
                pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
        except OSError as err:
            if is_hub_id(source):
                raise unavailable("model", source, err) from err
            raise
    # Casting only when needed: diffusers warns on every dtype cast through ``to()``.
    pipe = pipe.to(target) if dtype in (None, pipe.dtype) else pipe.to(target, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe
