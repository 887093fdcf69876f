"""``build_concept``: the features of one concept, from its statistics, in one call.

Usage::

    cfg = ConceptBuildConfig(concept="cat", model="CompVis/stable-diffusion-v1-4",
                             sae="bcywinski/SAeUron", hookpoint="unet.up_blocks.1.attentions.1")
    features = build_concept(cfg)

The model's own SAE and hookpoint are used when none is named (``model="minicanvas"`` alone
is enough), and a bundle's name is accepted as ``sae`` too. The shortcut's defaults
(:data:`SHORTCUT_TAU` latents read at step :data:`SHORTCUT_STEP` of :data:`SHORTCUT_IMAGES`
images) are the same here, in :class:`saeuron.SAeUron` and in the slider.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from saeuron.erasure.concepts.cache import (
    StatsCache,
    default_cache_dir,
    model_id,
    stats_cache_key,
)
from saeuron.erasure.concepts.prompts import NEUTRAL, concept_prompts, other_prompt_sets
from saeuron.erasure.concepts.select import (
    pooled_mean,
    select_contrastive,
    select_shortcut,
)
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.erasure.preflight import check_erasure
from saeuron.models.defaults import resolve_sae
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.sampling import (
    SamplingConfig,
    check_schedule,
    sampling_with,
    use_scheduler,
)
from saeuron.models.tokens import ACTIVATION_SITES, CFG_HALVES
from saeuron.sae import Sae
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field
from saeuron.utils.io import check_output_file
from saeuron.utils.prompts import read_prompts

logger = logging.getLogger(__name__)

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
class ConceptBuildConfig(Config):
    """Settings of ``saeuron concept build``: which latents to edit for one concept."""

    concept: str = field(positional=True, help="the concept to find, e.g. 'Van Gogh' or 'cat'")
    model: str = field(help="diffusion model: a bundled name, tiny-sd, a folder or a hub id")
    sae: str | None = field(
        None,
        help="SAE folder, Hugging Face repo id or bundled name; default: the model's own "
        "(a bundle's, or the published SAE of a known model)",
    )
    hookpoint: str | None = field(
        None,
        help="module the SAE reads, e.g. unet.up_blocks.1.attentions.1; default: where the "
        "bundle keeps the concept, the model's known one, else the SAE's own",
    )
    method: str = field(
        "contrastive",
        choices=METHODS,
        help="'contrastive': concept vs other concepts at every step (SAeUron); 'shortcut': "
        "top latents of the concept's own images at one step",
    )
    prompts: str | None = field(
        None,
        help="file with the concept's prompts, one a line (all are used); default: "
        "num_prompts templated prompts (contrastive) or the concept itself (shortcut)",
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
    percentile: float = field(
        99.999,
        gt=0,
        lt=100,
        help="contrastive: keep latents scoring strictly above this percentile (20,480 "
        "latents: 1)",
    )
    tau: int | None = field(
        None,
        ge=1,
        le=100_000,
        help=f"keep the top tau latents per step; default: the percentile (contrastive), "
        f"{SHORTCUT_TAU} (shortcut)",
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
    cfg_half: str = field(
        "cond",
        choices=CFG_HALVES,
        help="'cond': read the conditional half of the CFG batch; 'both': every row",
    )
    cache_dir: str | None = field(
        None,
        help="statistics cache; default $SAEURON_CACHE/concepts or ~/.cache/saeuron/concepts",
    )
    out: str | None = field(None, help="write the features to OUT.safetensors + OUT.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("concept", "model"):
            value = getattr(self, name)
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
        self.sampling = self.sampling.resolved(self.model)
        sae, hookpoint = resolve_sae(self.model, self.sae, self.hookpoint, self.concept)
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


class _LazyPipeline:
    """Loads the pipeline on first use, so fully cached builds never load the model."""

    def __init__(self, cfg: ConceptBuildConfig, pipe: Any):
        self.cfg = cfg
        self.pipe = pipe

    def get(self) -> Any:
        if self.pipe is None:
            self.pipe = load_pipeline(self.cfg.model, device=self.cfg.sampling.device)
            use_scheduler(self.pipe, self.cfg.sampling.scheduler)
        return self.pipe


def build_concept(
    cfg: ConceptBuildConfig, pipe: Any | None = None, sae: Sae | None = None
) -> ConceptFeatures:
    """Compute (or read from the cache) the statistics ``cfg`` needs and select the features.

    ``pipe`` must be the model ``cfg.model`` names: the cache knows models by that name only.
    The pipeline is loaded only if some statistics are not cached yet.
    """
    if pipe is None and sae is None:
        # Nothing given: check the files, device, hookpoint, steps and size before loading.
        check_erasure(cfg.model, cfg.sampling, cfg.sae, cfg.hookpoint)
    if sae is None:
        sae = Sae.from_pretrained(cfg.sae, hookpoint=cfg.hookpoint)
    hookpoint = cfg.hookpoint or sae.meta.get("hookpoint")
    if not hookpoint:
        raise ConfigError(
            "hookpoint",
            "the SAE does not say where it reads; pass e.g. unet.up_blocks.1.attentions.1",
        )
    site = sae.meta.get("activation_site", "output")
    check_choice("activation_site", site, ACTIVATION_SITES)
    if prompt_encoder_of(hookpoint) and cfg.method == "shortcut":
        raise ConfigError(
            "method", f"got 'shortcut'; {hookpoint} runs once per prompt, with no step to "
            "pick: use 'contrastive'"
        )  # fmt: skip
    # Every prompt file is read before any sampling, so a bad one is refused up front.
    own_prompts = read_prompts(cfg.prompts, "prompts") if cfg.prompts else None
    other_sets = (
        other_prompt_sets(cfg.others, cfg.concept)
        if cfg.method == "contrastive" or cfg.others is not None
        else {}
    )
    lazy = _LazyPipeline(cfg, pipe)
    cache = StatsCache(cfg.cache_dir or default_cache_dir())
    shared = {
        "model": model_id(cfg.model),
        "sae": sae.fingerprint(),
        "hookpoint": hookpoint,
        "num_inference_steps": cfg.sampling.steps,
        "guidance_scale": cfg.sampling.guidance,
        "scheduler": cfg.sampling.scheduler,
        "seed": cfg.sampling.seed,
        "cfg_half": cfg.cfg_half,
        "activation_site": site,
        "method": cfg.method,
    }
    steps = [cfg.shortcut_step] if cfg.method == "shortcut" else None

    def stats_for(concept: str, prompts: list[str]) -> ConceptStats:
        key = stats_cache_key(**shared, concept=concept, prompts=prompts, steps=steps)

        def compute() -> ConceptStats:
            pipe = lazy.get()
            # A pipeline handed in keeps its own scheduler once the statistics are taken.
            with sampling_with(pipe, cfg.sampling.scheduler):
                check_schedule(pipe, cfg.sampling.steps)
                stats = collect_stats(
                    pipe,
                    sae,
                    prompts,
                    concept=concept,
                    hookpoint=hookpoint,
                    num_inference_steps=cfg.sampling.steps,
                    guidance_scale=cfg.sampling.guidance,
                    seed=cfg.sampling.seed,
                    cfg_half=cfg.cfg_half,
                    steps=steps,
                    batch_size=cfg.sampling.batch_size,
                    activation_site=site,
                )
                used = type(pipe.scheduler).__name__
            stats.meta.update(
                model=cfg.model, sae=str(sae.meta.get("source", cfg.sae)), scheduler=used
            )
            return stats

        return cache.get_or_compute(key, concept, compute)

    if cfg.method == "contrastive":
        prompts = own_prompts or concept_prompts(cfg.concept, cfg.num_prompts)
        target = stats_for(cfg.concept, prompts)
        others = [stats_for(name, p) for name, p in other_sets.items()]
        features = select_contrastive(
            target,
            others,
            percentile=None if cfg.tau is not None else cfg.percentile,
            tau=cfg.tau,
            active_range=cfg.active_range,
            max_other_ratio=cfg.max_other_ratio,
            threshold_concepts=cfg.threshold_concepts,
            active_gate=cfg.active_gate,
        )
    else:
        prompts = own_prompts or [cfg.concept] * cfg.shortcut_images
        target = stats_for(cfg.concept, prompts)
        neutral = None
        if cfg.others is not None:
            others = [stats_for(name, p) for name, p in other_sets.items()]
            neutral = ConceptStats(
                concept=",".join(o.concept for o in others),
                mean=pooled_mean(others),
                active_frac=torch.zeros_like(others[0].active_frac),
                n_prompts=sum(o.n_prompts for o in others),
                timesteps=others[0].timesteps,
                meta={"steps": others[0].steps},
            )
        tau = cfg.tau if cfg.tau is not None else SHORTCUT_TAU
        features = select_shortcut(target, tau=tau, step=0, neutral=neutral)
    if cfg.method == "shortcut":
        for name, on in (
            ("activity_filter", cfg.activity_filter),
            ("max_other_ratio", cfg.max_other_ratio is not None),
            ("active_gate", cfg.active_gate is not None),
        ):
            if on:
                logger.warning("%s applies to the contrastive method only; ignored", name)
    # Erasing checks it: features only mean something with the SAE they were selected from.
    features.meta[SAE_FINGERPRINT] = sae.fingerprint()
    if cfg.out:
        features.save(cfg.out)
        logger.info("concept %r: features written to %s", cfg.concept, cfg.out)
    return features


def summarize(features: ConceptFeatures) -> str:
    """One line per fact: steps, latents per step, distinct latents."""
    counts = [int((row >= 0).sum()) for row in features.indices]
    per_step = (
        f"{counts[0]} at every step"
        if features.num_steps == 1
        else f"min {min(counts)}, mean {sum(counts) / len(counts):.2f}, max {max(counts)} per step"
    )
    latents = sorted(features.latents())
    shown = ", ".join(map(str, latents[:20])) + (" ..." if len(latents) > 20 else "")
    return (
        f"concept {features.concept!r} ({features.meta.get('method', '?')}, "
        f"{features.num_steps} step{'s' if features.num_steps != 1 else ''} at "
        f"{features.hookpoint}): {per_step}; {len(latents)} distinct latents: {shown}"
    )
