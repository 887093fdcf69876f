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
from typing import Any

import torch

from saeuron.erasure.concepts.build_config import (
    METHODS,
    SHORTCUT_IMAGES,
    SHORTCUT_STEP,
    SHORTCUT_TAU,
    THRESHOLD_CONCEPTS,
    ConceptBuildConfig,
    default_shortcut_step,
)
from saeuron.erasure.concepts.cache import (
    StatsCache,
    default_cache_dir,
    model_id,
    stats_cache_key,
)
from saeuron.erasure.concepts.prompts import concept_prompts, other_prompt_sets
from saeuron.erasure.concepts.select import (
    pooled_mean,
    select_contrastive,
    select_shortcut,
)
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.erasure.preflight import check_erasure
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.sampling import (
    check_schedule,
    sampling_with,
    use_scheduler,
)
from saeuron.models.tokens import ACTIVATION_SITES
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError, check_choice
from saeuron.utils.prompts import read_prompts

# The settings are re-exported from the torch-free module that --help reads.
__all__ = [
    "METHODS",
    "SHORTCUT_IMAGES",
    "SHORTCUT_STEP",
    "SHORTCUT_TAU",
    "THRESHOLD_CONCEPTS",
    "ConceptBuildConfig",
    "build_concept",
    "default_shortcut_step",
    "summarize",
]

logger = logging.getLogger(__name__)


class _LazyPipeline:
    """Loads the pipeline on first use, so fully cached builds never load the model."""

    def __init__(self, cfg: ConceptBuildConfig, pipe: Any):
        self.cfg = cfg
        self.pipe = pipe

    def get(self) -> Any:
        if self.pipe is None:
            self.pipe = load_pipeline(self.cfg.resolved_model, device=self.cfg.sampling.device)
            use_scheduler(self.pipe, self.cfg.sampling.scheduler)
        return self.pipe


class _StatsSource:
    """A concept's statistics: from the cache, or sampled (and cached) on first need."""

    def __init__(
        self, cfg: ConceptBuildConfig, pipe: Any | None, sae: Sae, hookpoint: str, site: str
    ):
        self.cfg = cfg
        self.sae = sae
        self.hookpoint = hookpoint
        self.site = site
        self.lazy = _LazyPipeline(cfg, pipe)
        self.cache = StatsCache(cfg.cache_dir or default_cache_dir())
        self.shared = {
            "model": model_id(cfg.model),
            "sae": sae.fingerprint(),
            "hookpoint": hookpoint,
            "num_inference_steps": cfg.sampling.steps,
            "guidance_scale": cfg.sampling.guidance,
            "scheduler": cfg.sampling.scheduler,
            "seed": cfg.sampling.seed,
            "guidance_half": cfg.guidance_half,
            "activation_site": site,
            "method": cfg.method,
        }
        self.steps = [cfg.shortcut_step] if cfg.method == "shortcut" else None

    def __call__(self, concept: str, prompts: list[str]) -> ConceptStats:
        key = stats_cache_key(**self.shared, concept=concept, prompts=prompts, steps=self.steps)
        return self.cache.get_or_compute(key, concept, lambda: self._compute(concept, prompts))

    def _compute(self, concept: str, prompts: list[str]) -> ConceptStats:
        cfg, sae = self.cfg, self.sae
        pipe = self.lazy.get()
        # A pipeline handed in keeps its own scheduler once the statistics are taken.
        with sampling_with(pipe, cfg.sampling.scheduler):
            check_schedule(pipe, cfg.sampling.steps)
            stats = collect_stats(
                pipe,
                sae,
                prompts,
                concept=concept,
                hookpoint=self.hookpoint,
                num_inference_steps=cfg.sampling.steps,
                guidance_scale=cfg.sampling.guidance,
                seed=cfg.sampling.seed,
                guidance_half=cfg.guidance_half,
                steps=self.steps,
                batch_size=cfg.sampling.batch_size,
                activation_site=self.site,
            )
            used = type(pipe.scheduler).__name__
        stats.meta.update(model=cfg.model, sae=str(sae.meta.get("source", cfg.sae)), scheduler=used)
        return stats


def build_concept(
    cfg: ConceptBuildConfig, pipe: Any | None = None, sae: Sae | None = None
) -> ConceptFeatures:
    """Compute (or read from the cache) the statistics ``cfg`` needs and select the features.

    ``pipe`` must be the model ``cfg.model`` names: the cache knows models by that name only.
    The pipeline is loaded only if some statistics are not cached yet.
    """
    sae, hookpoint, site = _prepare(cfg, pipe, sae)
    # Every prompt file is read before any sampling, so a bad one is refused up front.
    own_prompts = read_prompts(cfg.prompts, "prompts") if cfg.prompts else None
    other_sets = (
        other_prompt_sets(cfg.others, cfg.concept)
        if cfg.method == "contrastive" or cfg.others is not None
        else {}
    )
    stats_for = _StatsSource(cfg, pipe, sae, hookpoint, site)
    if cfg.method == "contrastive":
        features = _contrastive(cfg, stats_for, own_prompts, other_sets)
    else:
        features = _shortcut(cfg, stats_for, own_prompts, other_sets)
    if cfg.method == "shortcut":
        _warn_contrastive_only(cfg)
    _write(cfg, features, sae)
    return features


def _prepare(cfg: ConceptBuildConfig, pipe: Any | None, sae: Sae | None) -> tuple[Sae, str, str]:
    """The SAE, its hookpoint and activation site, refused before anything samples."""
    if pipe is None and sae is None:
        # Nothing given: check the files, device, hookpoint, steps and size before loading.
        check_erasure(cfg.resolved_model, cfg.sampling, cfg.sae, cfg.hookpoint)
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
    return sae, hookpoint, site


def _contrastive(
    cfg: ConceptBuildConfig,
    stats_for: _StatsSource,
    own_prompts: list[str] | None,
    other_sets: dict[str, list[str]],
) -> ConceptFeatures:
    """The target's and every other concept's statistics, then SAeUron's selection."""
    prompts = own_prompts or concept_prompts(cfg.concept, cfg.num_prompts)
    target = stats_for(cfg.concept, prompts)
    others = [stats_for(name, p) for name, p in other_sets.items()]
    return select_contrastive(
        target,
        others,
        percentile=None if cfg.tau is not None else cfg.percentile,
        tau=cfg.tau,
        active_range=cfg.active_range,
        max_other_ratio=cfg.max_other_ratio,
        threshold_concepts=cfg.threshold_concepts,
        active_gate=cfg.active_gate,
    )


def _shortcut(
    cfg: ConceptBuildConfig,
    stats_for: _StatsSource,
    own_prompts: list[str] | None,
    other_sets: dict[str, list[str]],
) -> ConceptFeatures:
    """The target's statistics at one step; the others, if named, pooled into the neutral
    threshold."""
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
    return select_shortcut(target, tau=tau, step=0, neutral=neutral)


def _warn_contrastive_only(cfg: ConceptBuildConfig) -> None:
    """The shortcut has no candidates to filter: say which settings it leaves unused."""
    for name, on in (
        ("activity_filter", cfg.activity_filter),
        ("max_other_ratio", cfg.max_other_ratio is not None),
        ("active_gate", cfg.active_gate is not None),
    ):
        if on:
            logger.warning("%s applies to the contrastive method only; ignored", name)


def _write(cfg: ConceptBuildConfig, features: ConceptFeatures, sae: Sae) -> None:
    """Stamp the SAE's fingerprint on the features and save them if ``cfg.out`` says where."""
    # Erasing checks it: features only mean something with the SAE they were selected from.
    features.meta[SAE_FINGERPRINT] = sae.fingerprint()
    if cfg.out:
        features.save(cfg.out)
        logger.info("concept %r: features written to %s", cfg.concept, cfg.out)


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
