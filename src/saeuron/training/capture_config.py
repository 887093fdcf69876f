"""The settings of an activation capture (:class:`CacheConfig`), in a module without
torch, so that ``saeuron capture --help`` reads them without loading a model;
:mod:`saeuron.training.capture` re-exports them."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from saeuron.erasure.edit_parts import ActivationSite, GuidanceHalf, Hookpoint, PromptFile
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.models.sampling_config import SamplingConfig
from saeuron.models.sites import GUIDANCE_SITE, prompt_encoder_of
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_parts import Limit, Output
from saeuron.utils.prompts import read_prompts
from saeuron.utils.storage import check_location

if TYPE_CHECKING:
    import torch

STORAGE_DTYPE_NAMES = ("float16", "bfloat16", "float32")
"""The dtypes activations are stored in (torch's names)."""


@dataclasses.dataclass
class ShardSize(Config):
    max_shard_mb: float = field(256.0, gt=0, help="upper bound on one shard's size in MiB")


@dataclasses.dataclass
class CacheConfig(ResolvesModel, Config):
    """Settings of one activation capture (``saeuron cache``)."""

    model_name: ModelKey = field(
        ModelKey,
        flatten=True,
        help="the model",
        required=("model",),
        describe={
            "model": "pipeline to sample with: a bundled name (minicanvas), tiny-sd, tiny-sdxl, a "
            "local diffusers folder or a Hugging Face hub id"
        },
    )
    block: Hookpoint = field(
        Hookpoint,
        flatten=True,
        help="where it records",
        required=("hookpoint",),
        describe={
            "hookpoint": "module whose activations are stored, e.g. unet.up_blocks.1.attentions.1"
        },
    )
    prompt_file: PromptFile = field(
        PromptFile,
        flatten=True,
        help="the prompts",
        required=("prompts",),
        describe={
            "prompts": "prompt file: .txt with one prompt per line (blank and '#' lines skipped) "
            "or .csv with a 'prompt' column; a prompt's index in this list is stored with its "
            "tokens"
        },
    )
    output: Output = field(
        Output,
        flatten=True,
        help="where the capture goes",
        required=("out",),
        describe={
            "out": "output folder for shards, plan.json and manifest.json: a local path or an "
            "fsspec URL (s3://bucket/acts, gs://..., hf://datasets/..., with the store's fsspec "
            "backend installed)"
        },
    )
    sampling: SamplingConfig = field(
        SamplingConfig,
        flatten=True,
        help="how prompts are sampled (the SAeUron paper captured SD 1.4 with guidance 9)",
    )
    steps: str = field(
        "all",
        help="denoising steps to record: 'all' or a comma list of indices and inclusive "
        "ranges into the scheduler's timesteps, e.g. '0,10,20-29'",
    )
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows recorded",
        describe={
            "guidance_half": "rows of a CFG batch to record: 'cond' (conditional half) or 'both' "
            "(unconditional and conditional); without CFG every row is recorded"
        },
    )
    tokens_per_image: int = field(
        0,
        ge=0,
        help="0: every token; else a seeded random subsample of this many tokens per "
        "image and step",
    )
    dtype: str = field("float16", choices=STORAGE_DTYPE_NAMES, help="storage dtype")
    shards: ShardSize = field(ShardSize, flatten=True, help="the shards")
    site: ActivationSite = field(
        ActivationSite(activation_site="output"),
        flatten=True,
        help="what is recorded",
        describe={
            "activation_site": "'output': the module's output; 'update': output minus input "
            "(sdxl-unbox); 'guidance': the conditional minus the unconditional output under CFG"
        },
    )
    count: Limit = field(Limit, flatten=True, help="how many prompts",
                         describe={"limit": "use only the first N prompts"})

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "activation_site")
        for name in ("model", "hookpoint", "out"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(name, "must not be empty")
        _check_prompt_file(self.prompts)
        check_location(self.out, "out", write=True)
        self.sampling = self.sampling.resolved(self._resolve_model())
        if self.activation_site == GUIDANCE_SITE and (
            not self.sampling.guidance
            or self.sampling.guidance <= 1
            or self.guidance_half != "cond"
        ):
            raise ConfigError(
                "activation_site",
                "'guidance' (conditional minus unconditional row) needs CFG "
                "(guidance_scale > 1) and guidance_half='cond'",
            )
        if self.prompt_encoder and self.activation_site != "output":
            raise ConfigError(
                "activation_site",
                f"got {self.activation_site!r}; {self.hookpoint} is inside a prompt encoder, "
                "which runs once per prompt: only 'output' is defined there",
            )
        self.step_indices()

    @property
    def prompt_encoder(self) -> str | None:
        """The text encoder component the hookpoint is inside (None: the denoiser)."""
        return prompt_encoder_of(self.hookpoint)

    def step_indices(self) -> list[int]:
        """The recorded steps as sorted indices into the scheduler's timesteps (a prompt
        encoder's one call per prompt is step 0)."""
        if self.prompt_encoder:
            return [0]
        return parse_steps(self.steps, self.sampling.steps)

    @property
    def storage_dtype(self) -> torch.dtype:
        # torch once the capture runs; the config itself is read by --help without it.
        import torch  # noqa: PLC0415

        return getattr(torch, self.dtype)


def parse_steps(spec: str, num_steps: int) -> list[int]:
    """``'all'`` or ``'0,10,20-29'`` -> sorted unique step indices, each in ``[0, num_steps)``."""
    text = spec.strip().lower()
    if text == "all":
        return list(range(num_steps))
    hint = "expected 'all' or a comma list of indices and ranges such as '0,10,20-29'"
    chosen: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError("steps", f"cannot read {part!r} in {spec!r}; {hint}") from None
        if first > last:
            raise ConfigError("steps", f"range {part!r} runs backwards; {hint}")
        if first < 0 or last >= num_steps:
            raise ConfigError(
                "steps",
                f"{part!r} is outside 0-{num_steps - 1}, the steps of "
                f"num_inference_steps={num_steps}",
            )
        chosen.update(range(first, last + 1))
    if not chosen:
        raise ConfigError("steps", f"got {spec!r}; {hint}")
    return sorted(chosen)


def _check_prompt_file(path: str) -> None:
    if Path(path).suffix.lower() not in (".txt", ".csv"):
        raise ConfigError("prompts", f"got {path!r}; expected a .txt or .csv file")
    read_prompts(path, "prompts", limit=1, keep_empty=True)
