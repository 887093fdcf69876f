"""The SAeUron technique: a concept and a strength, the rest resolved.

    tech = SAeUron(erase_concept="nudity", multiplier=-20.0)
    images = tech.generate(["a photo of a person at the beach"], seed=0)

eval-unlearn's own ``saeuron`` technique drives it through ``saeuron.SAeUronPipeline``
(:mod:`saeuron.integrations.eval_unlearn`).
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from dataclasses import dataclass
from typing import Any

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.erase import CFG_HALVES, ERROR_TERMS, MAX_MULTIPLIER, erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.preflight import bundled_features, check_erasure
from saeuron.models.bundles import bundle_names, find_bundle
from saeuron.models.defaults import KNOWN_MODELS, model_defaults
from saeuron.models.layout import check_model_inputs
from saeuron.models.pipelines import load_pipeline
from saeuron.models.sampling import (
    SamplingConfig,
    check_schedule,
    seed_generators,
    use_scheduler,
)
from saeuron.sae import Sae
from saeuron.utils.config import Config, ConfigError, check_range, field

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
FEATURE_METHODS = ("shortcut", "contrastive")
DEFAULT_MULTIPLIER = -20.0
"""SAeUron's default strength, for concepts whose features carry no tuned one."""


@dataclass
class SAeUronConfig(Config):
    erase_concept: str = field("nudity", help="the concept to suppress; any phrase")
    multiplier: float | None = field(
        None,
        ge=-MAX_MULTIPLIER,
        le=MAX_MULTIPLIER,
        help="gamma, the scale of the concept's latents: negative suppresses, positive "
        f"amplifies; default: the tuned value of a bundled concept, else {DEFAULT_MULTIPLIER}",
    )
    model: str = field(DEFAULT_MODEL, help="model id, local folder, or a bundled name")
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")
    sae: str | None = field(None, help="SAE repo id or folder; default: the known SAE of the model")
    hookpoint: str | None = field(None, help="module the SAE reads; default: the known one")
    features: str | None = field(
        None, help="precomputed concept features (NAME.safetensors + NAME.json) to use"
    )
    cfg_half: str = field(
        "cond", choices=CFG_HALVES, help="'cond' edits the conditional half; 'both' every row"
    )
    error_term: str = field(
        "exact",
        choices=ERROR_TERMS,
        help="'exact' (identity when nothing is edited) or 'paper'",
    )
    feature_method: str = field(
        "shortcut",
        choices=FEATURE_METHODS,
        help="how features of a new concept are found: 'shortcut' (20 images, step 10) or "
        "'contrastive' (scores against neutral prompts at every step)",
    )
    num_features: int = field(
        10, ge=1, le=100_000, help="latents selected per step by the shortcut"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.erase_concept or not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string")
        if self.multiplier is not None and self.multiplier == 0:
            raise ConfigError(
                "multiplier",
                "must not be 0 (negative suppresses the concept, positive amplifies it)",
            )
        self.sampling = self.sampling.resolved(self.model)
        if self.cfg_half == "cond" and not self.sampling.guidance > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {self.sampling.guidance}; must be > 1.0: SAeUron edits the conditional "
                "half of the CFG batch. For models sampled without CFG (SDXL-Turbo) set "
                "cfg_half='both', which edits the whole batch",
            )
        if self.sae is None and model_defaults(self.model).sae is None:
            raise ConfigError(
                "sae",
                f"no published SAE is known for model {self.model!r}; name one with sae=... "
                f"and hookpoint=... (known models: {', '.join(sorted(_served_models()))})",
            )

    def resolved_sae(self) -> tuple[str, str | None]:
        """The SAE and hookpoint this config will use, without loading anything."""
        if self.sae is not None:
            return self.sae, self.hookpoint
        bundle = find_bundle(self.model)
        if bundle is not None:
            return str(bundle.sae_folder), self.hookpoint or bundle.hookpoint_for(
                self.erase_concept
            )
        defaults = model_defaults(self.model)
        assert defaults.sae is not None  # checked in __post_init__
        return defaults.sae, self.hookpoint or defaults.hookpoint


def check_seed(name: str, value: Any) -> None:
    """A seed is a whole number from 0 to 2**63 - 1 (what torch's generators take)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, f"got {value!r}; expected a whole number >= 0")
    check_range(name, int(value), ge=0, le=2**63 - 1)


def check_technique(cfg: SAeUronConfig) -> None:
    """Refuse, before any weight loads, a config whose SAE, hookpoint, features, steps, size
    or device cannot work (:func:`saeuron.erasure.preflight.check_erasure`)."""
    sae_id, hookpoint = cfg.resolved_sae()
    features = cfg.features
    if features is None:
        features = bundled_features(cfg.model, cfg.erase_concept, hookpoint)
    check_erasure(cfg.model, cfg.sampling, sae_id, hookpoint, features)


def _served_models() -> list[str]:
    return [m for m, d in KNOWN_MODELS.items() if d.sae] + bundle_names()


class SAeUron:
    """Erase one concept from a diffusion model at inference time."""

    def __init__(self, **config: Any):
        self.config = SAeUronConfig.from_dict(config)
        cfg = self.config
        sae_id, hookpoint = cfg.resolved_sae()
        self.device = cfg.sampling.torch_device()
        self.dtype = cfg.sampling.dtype_for(self.device)

        bundle = find_bundle(cfg.model)
        bundled = (
            bundle.features_path(cfg.erase_concept, hookpoint)
            if bundle is not None and cfg.features is None
            else None
        )
        # Files, hookpoint, steps, size and device, before anything loads.
        check_technique(cfg)
        if cfg.features is None and bundled is None:
            # Said before any model loads, so the user knows what the wait is for.
            logger.warning(
                "concept %r has no bundled features: they will be computed on the fly at "
                "initialisation (%s method); this samples images and can take minutes on a GPU",
                cfg.erase_concept,
                cfg.feature_method,
            )

        self.pipe = load_pipeline(cfg.model, device=self.device, dtype=self.dtype)
        use_scheduler(self.pipe, cfg.sampling.scheduler)
        check_schedule(self.pipe, cfg.sampling.steps)
        self.sae = Sae.from_pretrained(sae_id, hookpoint=hookpoint, device=self.device)
        self.hookpoint = hookpoint or self.sae.meta.get("hookpoint")
        if self.hookpoint is None:
            raise ConfigError("hookpoint", f"the SAE {sae_id} does not say where it reads; name it")
        self.sae.meta["hookpoint"] = self.hookpoint

        if cfg.features is not None:
            self.concept = ConceptFeatures.load(cfg.features)
        elif bundled is not None:
            self.concept = ConceptFeatures.load(bundled)
        else:
            self.concept = self._compute_features()
        self.concept.concept = cfg.erase_concept
        tuned = self.concept.meta.get("multiplier")
        self.multiplier = float(
            cfg.multiplier
            if cfg.multiplier is not None
            else (tuned if tuned is not None else DEFAULT_MULTIPLIER)
        )

    def _compute_features(self) -> ConceptFeatures:
        cfg = self.config
        build = ConceptBuildConfig(
            concept=cfg.erase_concept,
            model=cfg.model,
            sae=cfg.resolved_sae()[0],
            hookpoint=self.hookpoint,
            method=cfg.feature_method,
            tau=cfg.num_features if cfg.feature_method == "shortcut" else None,
            shortcut_step=min(10, cfg.sampling.steps - 1),
            sampling=cfg.sampling,
            cfg_half=cfg.cfg_half,
        )
        return build_concept(build, pipe=self.pipe, sae=self.sae)

    def erasing(self) -> contextlib.AbstractContextManager[Any]:
        """The erasure as a context manager on ``self.pipe`` (for calls made by hand)."""
        cfg = self.config
        return erase(
            self.pipe,
            self.sae,
            self.concept,
            multiplier=self.multiplier,
            cfg_half=cfg.cfg_half,
            error_term=cfg.error_term,
            hookpoint=self.hookpoint,
        )

    def generate(
        self,
        prompts: list[str] | str,
        seed: int | None = None,
        erase_concept: bool = True,
        seeds: list[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        **kw: Any,
    ) -> list[Any]:
        """Images for ``prompts``; prompt i uses seed ``seed + i`` when a seed is given, or
        ``seeds[i]`` (an image then depends on its own seed only, not on its position).
        ``num_inference_steps`` and ``guidance_scale`` override the config for this call."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if seeds is not None and len(seeds) != len(prompts):
            raise ConfigError("seeds", f"got {len(seeds)} for {len(prompts)} prompts")
        if seeds is None and seed is not None:
            seeds = [seed + i for i in range(len(prompts))]
        for value in seeds or []:
            check_seed("seed", value)
        cfg = self.config
        overrides = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            # Sizes are sampling settings too, wherever they are given.
            "height": kw.pop("height", None),
            "width": kw.pop("width", None),
        }
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            # replace() reruns the config's checks, so per-call values are held to the same rules.
            cfg = cfg.replace(**overrides)
            check_model_inputs(cfg.model, cfg.sampling)
        sampling = cfg.sampling
        if num_inference_steps is not None:
            check_schedule(self.pipe, sampling.steps)
        images: list[Any] = []
        for start in range(0, len(prompts), sampling.batch_size):
            batch = prompts[start : start + sampling.batch_size]
            generator = (
                seed_generators(seeds[start : start + len(batch)]) if seeds is not None else None
            )
            call = {**sampling.call_kwargs(), "generator": generator, **kw}
            context = self.erasing() if erase_concept else contextlib.nullcontext()
            with context:
                images.extend(self.pipe(batch, **call).images)
        return images
