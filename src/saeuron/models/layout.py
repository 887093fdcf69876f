"""What a model is, read from its config files: checks that run before any weight loads.

A diffusers folder (bundled, local, or a hub repo in the local cache) describes itself in
``model_index.json``, ``<denoiser>/config.json``, ``scheduler/scheduler_config.json`` and
``vae/config.json``. From those alone :func:`check_model_inputs` tells whether a hookpoint is
a module of the denoiser (the denoiser is built on the ``meta`` device: module names and
widths, no memory, no weights), whether the number of steps fits the scheduler's training
schedule, and whether an image size is one the model can sample. A test model (``tiny-sd``)
is built in memory rather than loaded, so it is checked when built.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import nn

from saeuron.models.denoiser import DENOISER_NAMES
from saeuron.models.hookpoints import block_names
from saeuron.models.resolve import ModelArg, ResolvedModel, resolve_model
from saeuron.models.sampling import SamplingConfig
from saeuron.models.tiny import TINY_MODELS
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.files import MODEL_INDEX
from saeuron.utils.hub import is_hub_id, local_snapshot
from saeuron.utils.text import read_text

logger = logging.getLogger(__name__)

MAX_SIDE_FACTOR = 4
"""Largest image side accepted, as a multiple of the model's native side (SD 1.4: 2048 px).
Beyond it a UNet step grows past any GPU's memory and the model never saw such images."""
SIDE_MULTIPLE = 8
"""diffusers' Stable Diffusion pipelines sample sides that are multiples of 8 pixels."""
CONFIG_FILES = (
    MODEL_INDEX,
    "*/config.json",
    "scheduler/scheduler_config.json",
)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(read_text(path, "model"))
    except json.JSONDecodeError as err:
        raise FileFormatError(path, f"not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict):
        raise FileFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


@dataclass
class ModelLayout:
    """A diffusers pipeline as its config files describe it."""

    model: str
    folder: Path
    index: dict[str, Any]

    @cached_property
    def denoiser_name(self) -> str:
        for name in DENOISER_NAMES:
            if isinstance(self.index.get(name), list) and self.index[name][0]:
                return name
        raise ConfigError(
            "model",
            f"{self.model}: {MODEL_INDEX} names no denoiser ({' or '.join(DENOISER_NAMES)})",
        )

    def component_config(self, name: str, file: str = "config.json") -> dict[str, Any] | None:
        path = self.folder / name / file
        return _read_json(path) if path.is_file() else None

    @cached_property
    def train_steps(self) -> int | None:
        """The scheduler's training timesteps (1000 for Stable Diffusion)."""
        config = self.component_config("scheduler", "scheduler_config.json")
        steps = (config or {}).get("num_train_timesteps")
        return int(steps) if isinstance(steps, int) else None

    @cached_property
    def native_side(self) -> int | None:
        """The side, in pixels, of the images the model samples by default."""
        unet = self.component_config(self.denoiser_name) or {}
        vae = self.component_config("vae") or {}
        sample = unet.get("sample_size")
        # AutoencoderKL's levels, or AutoencoderTiny's decoder levels: each halves the side.
        channels = vae.get("block_out_channels") or vae.get("decoder_block_out_channels")
        if isinstance(sample, (list, tuple)):
            sample = max(sample)
        if not isinstance(sample, int) or not isinstance(channels, list) or not channels:
            return None
        return sample * 2 ** (len(channels) - 1)

    @cached_property
    def denoiser(self) -> nn.Module | None:
        """The denoiser on the meta device (module names and shapes, no weights)."""
        entry = self.index.get(self.denoiser_name)
        config = self.component_config(self.denoiser_name)
        if config is None or not isinstance(entry, list) or entry[0] != "diffusers":
            return None
        cls = getattr(diffusers, str(entry[1]), None)
        if cls is None:
            return None
        try:
            with torch.device("meta"):
                return cls.from_config(config)
        except Exception as err:  # noqa: BLE001 - any failure leaves the check to load time
            logger.debug("could not build %s from its config: %s", entry[1], err)
            return None

    def module(self, hookpoint: str) -> nn.Module | None:
        """The denoiser's module at ``hookpoint`` (on meta), or ConfigError naming it."""
        head, _, rest = hookpoint.partition(".")
        if head in self.index and head not in DENOISER_NAMES:
            return None  # another component (a text encoder): checked when loaded
        path = rest if head in DENOISER_NAMES else hookpoint
        if head in DENOISER_NAMES and head != self.denoiser_name:
            raise ConfigError(
                "hookpoint",
                f"{hookpoint!r}: {self.model}'s denoiser is {self.denoiser_name}, not {head}",
            )
        root = self.denoiser
        if root is None:
            return None
        try:
            return root.get_submodule(path) if path else root
        except AttributeError:
            blocks = block_names(self.denoiser_name, root)
            raise ConfigError(
                "hookpoint",
                f"{hookpoint!r} is not a module of {self.model}; blocks there: "
                + (", ".join(blocks[:12]) or "none")
                + (f", ... ({len(blocks)} in all)" if len(blocks) > 12 else ""),
            ) from None


def read_layout(resolved: ResolvedModel) -> ModelLayout | None:
    """The layout of a model from its config files; None where they cannot be read without
    loading or downloading it (a test model, a hub repo not cached yet while online)."""
    model = resolved.name
    if model in TINY_MODELS:
        return None
    bundle = resolved.bundle
    if bundle is not None:
        folder: Path | None = bundle.folder
    elif Path(model).is_dir():
        folder = Path(model)
        if not (folder / MODEL_INDEX).is_file():
            raise ConfigError(
                "model", f"{model} has no {MODEL_INDEX}: not a diffusers pipeline folder"
            )
    elif is_hub_id(model):
        folder = local_snapshot(model, "model", allow_patterns=list(CONFIG_FILES))
        if folder is None or not (folder / MODEL_INDEX).is_file():
            return None
    else:
        return None  # check_model names what is wrong with it
    assert folder is not None
    return ModelLayout(model, folder, _read_json(folder / MODEL_INDEX))


def module_width(module: nn.Module) -> int | None:
    """The channels a block reads and writes, where its config says (attention blocks)."""
    config = getattr(module, "config", None)
    width = getattr(config, "in_channels", None)
    out = getattr(config, "out_channels", None)
    if isinstance(width, int) and (out is None or out == width):
        return width
    return None


def hooked_width(module: nn.Module) -> int | None:
    """The width of what a hook on ``module`` reads, where the module says it: an
    attention block's config, a text encoder layer's ``embed_dim``, a linear layer's output.
    None where it does not (a transformer block of a DiT): nothing is refused on a guess."""
    width = module_width(module)
    if width is not None:
        return width
    embed = getattr(module, "embed_dim", None)
    if isinstance(embed, int) and not isinstance(embed, bool):
        return embed
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def check_hook_width(module: nn.Module, d_in: int, hookpoint: str, setting: str = "sae") -> None:
    """Refuse an SAE whose input width is not the width of the module it is about to hook:
    where the SAE meets the loaded model (a hub SAE is only known once downloaded, and an
    SAE given in Python is never seen by the preflight), so a mismatch is one line here,
    not a matrix-shape error from inside the first denoising step."""
    width = hooked_width(module)
    if width is not None and width != d_in:
        raise ConfigError(
            setting,
            f"the SAE reads {d_in} channels but {hookpoint} has {width}; it was trained on "
            "another model or hookpoint",
        )


def check_model_inputs(
    model: ModelArg,
    sampling: SamplingConfig | None = None,
    hookpoints: Sequence[str] = (),
    d_in: int | None = None,
    step_setting: str = "num_inference_steps",
) -> ModelLayout | None:
    """Refuse, before any weight loads, what the model cannot do: a hookpoint that is not a
    module of its denoiser (or whose width is not the SAE's ``d_in``), more steps than its
    scheduler was trained with, a side that is not a multiple of 8 or is more than
    ``MAX_SIDE_FACTOR`` times its native side. ``model`` is best passed resolved; a name is
    resolved here (training's capture still passes one)."""
    model = resolve_model(model)
    layout = read_layout(model)
    if layout is None:
        return None
    if sampling is not None:
        steps = sampling.num_inference_steps
        if steps is not None and layout.train_steps is not None and steps > layout.train_steps:
            raise ConfigError(
                step_setting,
                f"got {steps}; {model}'s scheduler was trained on {layout.train_steps} "
                f"timesteps, so at most {layout.train_steps} steps",
            )
        native = layout.native_side
        for name in ("height", "width"):
            side = getattr(sampling, name)
            if side is None:
                continue
            if side % SIDE_MULTIPLE:
                raise ConfigError(name, f"got {side}; must be a multiple of {SIDE_MULTIPLE}")
            if native is not None and side > MAX_SIDE_FACTOR * native:
                raise ConfigError(
                    name,
                    f"got {side}; {model} samples {native} px images, so at most "
                    f"{MAX_SIDE_FACTOR * native} ({MAX_SIDE_FACTOR} x its native side)",
                )
    for hookpoint in hookpoints:
        module = layout.module(hookpoint)
        width = module_width(module) if module is not None else None
        if d_in is not None and width is not None and width != d_in:
            raise ConfigError(
                "sae",
                f"the SAE reads {d_in} channels but {hookpoint} of {model} has {width}; "
                "it was trained on another model or hookpoint",
            )
    return layout
