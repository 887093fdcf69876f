"""The settings of ``saeuron concept`` (:class:`ConceptBuildConfig`), in a module without
torch, so that ``--help`` reads them without loading a model; :mod:`.build` (the work) and
:mod:`.cache` (the statistics cache) re-export what they define here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saeuron.erasure.concepts.prompts import NEUTRAL
from saeuron.erasure.edit_parts import (
    GuidanceHalf,
    Hookpoint,
    Percentile,
    PromptFile,
    SaeName,
    Tau,
)
from saeuron.models.defaults import resolve_sae
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvedModel, ResolvesModel, resolve_model
from saeuron.models.sampling_config import SamplingConfig
from saeuron.utils.atomic import check_output_file
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null
from saeuron.utils.config_parts import Concept, Output
from saeuron.utils.files import user_dir


def default_cache_dir() -> Path:
    """``$SAEURON_CACHE/concepts``, else ``~/.cache/saeuron/concepts``."""
    return user_dir() / "concepts"


METHODS = ("contrastive", "shortcut")
SHORTCUT_TAU = 10
"""Latents the shortcut keeps, the count the SAeUron technique has always used for it."""
SHORTCUT_STEP = 10
"""The denoising step the shortcut reads (the last one on schedules shorter than 11 steps)."""
SHORTCUT_IMAGES = 20
THRESHOLD_CONCEPTS = 20
"""Concepts a threshold averages over at least: UnlearnCanvas' 20 objects, the smaller of the
paper's two sets (docs/method.md, section 4)."""


def default_shortcut_step(num_inference_steps: int) -> int:
    """The step the shortcut reads by default on a schedule of ``num_inference_steps``."""
    return min(SHORTCUT_STEP, num_inference_steps - 1)


@dataclass
class ConceptBuildConfig(ResolvesModel, Config):
    """Settings of ``saeuron concept build``: which latents to edit for one concept."""

    erased: Concept = field(Concept, flatten=True, help="the concept", required=("concept",),
                            positionals=("concept",),
                            describe={"concept": "the concept to find, e.g. 'Van Gogh' or "
                                      "'cat'"})  # fmt: skip
    model_name: ModelKey = field(
        ModelKey,
        flatten=True,
        help="the model",
        required=("model",),
        describe={"model": "diffusion model: a bundled name, tiny-sd, a folder or a hub id"},
    )
    sae_name: SaeName = field(
        SaeName,
        flatten=True,
        help="the SAE",
        describe={
            "sae": "SAE folder, Hugging Face repo id or bundled name; default: the model's own "
            "(a bundle's, or the published SAE of a known model)"
        },
    )
    block: Hookpoint = field(
        Hookpoint,
        flatten=True,
        help="where the SAE reads",
        describe={
            "hookpoint": "module the SAE reads, e.g. unet.up_blocks.1.attentions.1; default: "
            "where the bundle keeps the concept, the model's known one, else the SAE's own"
        },
    )
    method: str = field(
        "contrastive",
        choices=METHODS,
        help="'contrastive': concept vs other concepts at every step (SAeUron); 'shortcut': "
        "top latents of the concept's own images at one step",
    )
    prompt_file: PromptFile = field(
        PromptFile,
        flatten=True,
        help="the concept's prompts",
        describe={
            "prompts": "file with the concept's prompts, one a line (all are used); default: "
            "num_prompts templated prompts (contrastive) or the concept itself (shortcut)"
        },
    )
    num_prompts: int = field(
        20, ge=1, le=100_000, help="templated prompts of the concept when no file is given"
    )
    others: str | None = field(
        None,
        help="prompts of the other concepts: a text file (one concept), a JSON file "
        "{concept: [prompts]}, or 'neutral' (bundled set); default: 'neutral' for "
        "contrastive, none for shortcut (threshold 0)",
    )
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")
    kept_percentile: Percentile = field(
        Percentile(percentile=99.999),
        flatten=True,
        help="latents kept by score",
        describe={
            "percentile": "contrastive: keep latents scoring strictly above this percentile "
            "(20,480 latents: 1)"
        },
    )
    kept_top: Tau = field(
        Tau,
        flatten=True,
        help="latents kept by rank",
        describe={
            "tau": "keep the top tau latents per step; default: the percentile (contrastive), "
            f"{SHORTCUT_TAU} (shortcut)"
        },
    )
    threshold_concepts: int | None = field(
        THRESHOLD_CONCEPTS,
        ge=1,
        le=100_000,
        help="contrastive: a latent's threshold averages its mean over at least this many "
        "concepts; a smaller 'others' set stands in for the missing ones (docs/method.md, "
        "section 4). 1 (or null): the plain mean over the concepts given",
    )
    activity_filter: bool = field(
        False, help="drop latents active on too few or too many of the concept's tokens"
    )
    min_active: float = field(
        0.01, ge=0, le=1, help="activity filter: lowest share of active tokens"
    )
    max_active: float = field(
        0.99, ge=0, le=1, help="activity filter: highest share of active tokens"
    )
    max_other_ratio: float | None = field(
        None,
        gt=0,
        help="drop latents whose mean on any one other concept exceeds this share of their "
        "mean on the concept (e.g. 0.5); default: no such filter",
    )
    active_gate: float | None = field(
        None,
        ge=0,
        le=1000,
        help="raise each threshold to at least this share of the latent's mean activation "
        "where it fires on the concept (e.g. 0.5); default: the paper's threshold alone",
    )
    shortcut_step: int | None = field(
        None,
        ge=0,
        help=f"shortcut: the denoising step whose activations count; default: "
        f"{SHORTCUT_STEP}, or the last step of a shorter schedule",
    )
    shortcut_images: int = field(
        SHORTCUT_IMAGES,
        ge=1,
        le=100_000,
        help="shortcut: images generated from the concept's name",
    )
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows read",
        describe={
            "guidance_half": "'cond': read the conditional half of the CFG batch; 'both': every row"
        },
    )
    cache_dir: str | None = field(
        None,
        help="statistics cache; default $SAEURON_CACHE/concepts or ~/.cache/saeuron/concepts",
    )
    output: Output = field(
        Output,
        flatten=True,
        help="where the features go",
        describe={"out": "write the features to OUT.safetensors + OUT.json"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "percentile")
        for name in ("concept", "model"):
            value = getattr(self, name)
            # A model resolved by the caller is checked by its name.
            value = value.name if isinstance(value, ResolvedModel) else value
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(name, f"got {value!r}; must be a non-empty string")
        for name in ("sae", "hookpoint", "out", "cache_dir"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise ConfigError(name, "must be a non-empty string when given")
        if self.prompts is not None and not Path(self.prompts).is_file():
            raise ConfigError("prompts", f"file {self.prompts!r} does not exist")
        if self.others is not None and self.others != NEUTRAL and not Path(self.others).is_file():
            raise ConfigError(
                "others", f"got {self.others!r}; expected an existing file or {NEUTRAL!r}"
            )
        if self.min_active >= self.max_active:
            raise ConfigError(
                "min_active",
                f"got {self.min_active!r}; must be < max_active ({self.max_active!r})",
            )
        # Where the model (and a named SAE) enter: looked up once, here; a caller that
        # resolved them already (SAeUron computing features) passes them resolved.
        self._resolve_model()
        given_sae = resolve_model(self.sae, "sae") if self.sae is not None else None
        self.sampling = self.sampling.resolved(self._model)
        sae, hookpoint = resolve_sae(self._model, given_sae, self.hookpoint, self.concept)
        if sae is None:
            raise ConfigError(
                "sae",
                f"no SAE is known for model {self.model!r}; name a folder, hub id or bundle",
            )
        self.sae, self.hookpoint = sae, hookpoint
        if self.shortcut_step is None:
            self.shortcut_step = default_shortcut_step(self.sampling.steps)
        if self.method == "shortcut":
            check_range("shortcut_step", self.shortcut_step, lt=self.sampling.steps)
        if self.cache_dir is None:
            self.cache_dir = str(default_cache_dir())
        if self.out:
            # Both files of the features (NAME.safetensors + NAME.json) must be writable.
            check_output_file(Path(self.out).with_suffix(".safetensors"), "out")

    @property
    def active_range(self) -> tuple[float, float] | None:
        return (self.min_active, self.max_active) if self.activity_filter else None
