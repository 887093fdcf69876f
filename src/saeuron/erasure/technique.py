"""The SAeUron technique: concepts and a strength, the rest resolved.

    tech = SAeUron(erase_concept="nudity", multiplier=-20.0)
    images = tech.generate(["a photo of a person at the beach"], seed=0)

Several concepts at once: ``erase_concept="moon,checkered"`` or a list. A pipeline (and an
SAE) the caller already has: ``SAeUron(pipe=pipe, sae=sae, erase_concept="cat")``.

eval-unlearn's own ``saeuron`` technique drives it through ``saeuron.SAeUronPipeline``
(:mod:`saeuron.integrations.eval_unlearn`).
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.erase import Erasure, erase, warn_if_unedited
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.preflight import bundled_features, check_erasure, check_recipe_erasure
from saeuron.erasure.recipe import Edit, Recipe
from saeuron.erasure.recipe_erasure import RecipeAssets, RecipeErasure
from saeuron.erasure.technique_config import (
    CONCEPT_SEPARATOR,
    DEFAULT_MODEL,
    DEFAULT_MULTIPLIER,
    FEATURE_METHODS,
    PRESETS,
    SAeUronConfig,
    split_concepts,
)
from saeuron.models.denoiser import denoiser
from saeuron.models.layout import check_model_inputs
from saeuron.models.pipelines import load_pipeline
from saeuron.models.progress import StepProgress
from saeuron.models.resolve import ResolvedModel, pipeline_name
from saeuron.models.sampling import check_schedule, seed_generators, use_scheduler
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError, check_range

# The settings are re-exported from the torch-free module that --help reads.
__all__ = [
    "CONCEPT_SEPARATOR",
    "DEFAULT_MODEL",
    "DEFAULT_MULTIPLIER",
    "FEATURE_METHODS",
    "PRESETS",
    "RECIPES_DIR",
    "Erasures",
    "SAeUron",
    "SAeUronConfig",
    "bundle_recipe",
    "bundled_recipe",
    "check_seed",
    "check_technique",
    "split_concepts",
]

logger = logging.getLogger(__name__)

RECIPES_DIR = "recipes"
"""Where a bundle keeps one recipe per concept (``recipes/<concept>.json``)."""


def check_seed(name: str, value: Any) -> None:
    """A seed is a whole number from 0 to 2**63 - 1 (what torch's generators take)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(name, f"got {value!r}; expected a whole number >= 0")
    check_range(name, int(value), ge=0, le=2**63 - 1)


def check_technique(cfg: SAeUronConfig) -> None:
    """Refuse, before any weight loads, a config whose SAE, hookpoint, features, steps, size
    or device cannot work (:func:`saeuron.erasure.preflight.check_erasure`)."""
    for concept in cfg.concepts:
        sae_id, hookpoint = cfg.resolved_sae(concept)
        features = cfg.features
        if features is None:
            features = bundled_features(cfg.resolved_model, concept, hookpoint)
        check_erasure(cfg.resolved_model, cfg.sampling, sae_id, hookpoint, features)


def bundled_recipe(cfg: SAeUronConfig) -> Recipe | None:
    """The bundle's tuned recipes of ``cfg``'s concepts, merged, when the preset is
    ``recipe``, no setting of the published method is named and every concept has one."""
    if cfg.recipe is not None or cfg.uses_paper_settings() or not cfg.concepts:
        return None
    bundle = cfg.resolved_model.bundle
    return None if bundle is None else bundle_recipe(bundle.folder, cfg.concepts)


def bundle_recipe(folder: Path, concepts: Sequence[str]) -> Recipe | None:
    """The recipes a bundle folder ships for ``concepts`` (``recipes/<concept>.json``),
    merged into one; None unless every concept has one."""
    paths = [folder / RECIPES_DIR / f"{name}.json" for name in concepts]
    if not paths or not all(p.is_file() for p in paths):
        return None
    return Recipe.merge([Recipe.load(p) for p in paths])


def _join_concepts(config: dict[str, Any]) -> None:
    """``erase_concept`` given as a list becomes the config's comma-separated text."""
    concepts = config.get("erase_concept")
    if isinstance(concepts, (list, tuple)):
        if any(not isinstance(c, str) or CONCEPT_SEPARATOR in c for c in concepts):
            raise ConfigError(
                "erase_concept", f"got {concepts!r}; expected concept names without commas"
            )
        config["erase_concept"] = CONCEPT_SEPARATOR.join(concepts)


def _take_sae(config: dict[str, Any]) -> Sae | None:
    """A loaded SAE given as ``sae``, taken out of the config (which records its source)."""
    given = config.pop("sae") if isinstance(config.get("sae"), Sae) else None
    if given is not None:
        config["sae"] = str(given.meta.get("source", "in-memory SAE"))
    return given


def _take_recipe(recipe: Recipe | str | None, config: dict[str, Any]) -> Recipe | None:
    """The recipe to erase with (given, or named in the config), loaded; the config records
    where it is, and takes the recipe's model and sampling unless they are named."""
    loaded = recipe if isinstance(recipe, Recipe) else None
    if recipe is not None and loaded is None:
        config["recipe"] = str(recipe)
    if loaded is None and config.get("recipe") is not None:
        loaded = Recipe.load(config["recipe"])
    if loaded is not None:
        config.setdefault("recipe", str(loaded.root))
        # The recipe's model and the sampling its scores were measured with, unless named.
        config.setdefault("model", loaded.base_model.id)
        config.setdefault("num_inference_steps", loaded.sampling.num_inference_steps)
        config.setdefault("guidance_scale", loaded.sampling.guidance_scale)
    return loaded


@dataclass
class Erasures:
    """The erasures a technique attached (one per hookpoint), with their totals."""

    erasures: list[Erasure]

    @property
    def calls(self) -> int:
        return sum(e.calls for e in self.erasures)

    @property
    def edited_tokens(self) -> int:
        return sum(e.edited_tokens for e in self.erasures)

    def __iter__(self) -> Iterator[Erasure]:
        return iter(self.erasures)


@dataclass
class _Group:
    """The concepts erased at one hookpoint with one SAE."""

    sae: Sae
    hookpoint: str
    concepts: list[ConceptFeatures]


class SAeUron:
    """Erase concepts from a diffusion model at inference time.

    ``SAeUron(config)`` erases with a built :class:`SAeUronConfig`; ``SAeUron(**keys)`` takes
    its keys (``erase_concept`` may be a list). ``pipe`` is a diffusers pipeline to use instead
    of loading ``model`` (with keys, its name, when it has one, stands for ``model``: sampling
    defaults and the statistics cache key on it), and ``sae`` may be a loaded
    :class:`~saeuron.sae.Sae`. A pipeline given as the first positional argument, as before
    configs could be, is still taken as ``pipe``.
    """

    def __init__(
        self,
        config: SAeUronConfig | Any | None = None,
        recipe: Recipe | str | None = None,
        *,
        pipe: Any | None = None,
        **keys: Any,
    ):
        if isinstance(config, SAeUronConfig):
            if recipe is not None or keys:
                raise TypeError(
                    "SAeUron(config) takes its settings from the config: name the recipe and "
                    "other keys in it (config.replace(...)), or pass keys without a config"
                )
            loaded = Recipe.load(config.recipe) if config.recipe is not None else None
            # Copied: erasing with a recipe names the recipe's concepts in it.
            self._setup(config.replace(), pipe, None, loaded)
            return
        if config is not None:
            if pipe is not None:
                raise TypeError("SAeUron() got a pipeline twice: positionally and as pipe=")
            pipe = config
        _join_concepts(keys)
        given_sae = _take_sae(keys)
        loaded = _take_recipe(recipe, keys)
        if pipe is not None and "model" not in keys:
            # The pipeline's own name stands for the model: the config looks it up, once.
            keys["model"] = pipeline_name(pipe)
        self._setup(SAeUronConfig.from_dict(keys), pipe, given_sae, loaded)

    @classmethod
    def from_config(cls, config: SAeUronConfig, pipe: Any | None = None) -> SAeUron:
        """The technique of a config built and checked already (the eval's): its model was
        looked up when the config was built and is not looked up again; ``SAeUron(config)``."""
        return cls(config, pipe=pipe)

    def _setup(
        self,
        config: SAeUronConfig,
        pipe: Any | None,
        given_sae: Sae | None,
        loaded: Recipe | None,
    ) -> None:
        """Everything after the config: the recipe or the per-concept SAEs and features,
        checked from files first, then the pipeline."""
        self.config = config
        self.recipe: Recipe | None = loaded or bundled_recipe(self.config)
        if self.recipe is not None:
            self._init_recipe(pipe)
            return
        bundled = self._bundled_features()
        if pipe is None and given_sae is None:
            # Files, hookpoint, steps, size and device, before anything loads.
            check_technique(self.config)
        self._warn_computed(bundled)
        self._use_pipeline(pipe)
        self.groups = self._groups(given_sae, bundled)
        self.multipliers = {f.concept: self._multiplier(f) for g in self.groups for f in g.concepts}
        self._warned_unedited = False

    # -- the steps of __init__ ------------------------------------------------------------------

    def _bundled_features(self) -> dict[str, Path | None]:
        """Each concept's features shipped with the model's bundle (None: not shipped, or
        features named in the config)."""
        cfg = self.config
        return {
            name: (
                bundled_features(cfg.resolved_model, name, cfg.resolved_sae(name)[1])
                if cfg.features is None
                else None
            )
            for name in cfg.concepts
        }

    def _warn_computed(self, bundled: dict[str, Path | None]) -> None:
        """Say, before any model loads, which concepts' features will be computed, so the
        user knows what the wait is for."""
        cfg = self.config
        fresh = [n for n, path in bundled.items() if path is None and cfg.features is None]
        if fresh:
            logger.warning(
                "%s no bundled features: they will be computed on the fly at "
                "initialisation (%s method); this samples images and can take minutes on a GPU",
                "concept " + repr(fresh[0]) + " has"
                if len(fresh) == 1
                else "concepts " + ", ".join(map(repr, fresh)) + " have",
                cfg.feature_method,
            )

    def _groups(self, given_sae: Sae | None, bundled: dict[str, Path | None]) -> list[_Group]:
        """Each concept's SAE and features, grouped by the hookpoint they are erased at."""
        groups: dict[str, _Group] = {}
        saes: dict[tuple[str, str | None], Sae] = {}
        for name in self.config.concepts:
            sae_id, hookpoint = self.config.resolved_sae(name)
            sae, hookpoint = self._sae_at(sae_id, hookpoint, given_sae, saes)
            features = self._features_of(name, sae_id, sae, hookpoint, bundled[name])
            group = groups.setdefault(hookpoint, _Group(sae, hookpoint, []))
            if group.sae is not sae:
                raise ConfigError(
                    "sae", f"two SAEs would read {hookpoint}; erase these concepts separately"
                )
            group.concepts.append(features)
        return list(groups.values())

    def _sae_at(
        self,
        sae_id: str,
        hookpoint: str | None,
        given_sae: Sae | None,
        loaded: dict[tuple[str, str | None], Sae],
    ) -> tuple[Sae, str]:
        """The SAE a concept is erased with and the hookpoint it reads; SAEs already in
        ``loaded`` are shared (two concepts at one block load one SAE)."""
        if given_sae is not None:
            sae = given_sae.to(self.device)
            hookpoint = self.config.hookpoint or sae.meta.get("hookpoint")
        else:
            if (sae_id, hookpoint) not in loaded:
                loaded[sae_id, hookpoint] = Sae.from_pretrained(
                    sae_id, hookpoint=hookpoint, device=self.device
                )
            sae = loaded[sae_id, hookpoint]
            hookpoint = hookpoint or sae.meta.get("hookpoint")
        if hookpoint is None:
            raise ConfigError("hookpoint", f"the SAE {sae_id} does not say where it reads; name it")
        sae.meta["hookpoint"] = hookpoint
        return sae, hookpoint

    def _features_of(
        self, name: str, sae_id: str, sae: Sae, hookpoint: str, bundled: Path | None
    ) -> ConceptFeatures:
        """A concept's features: those named, else the bundle's, else computed now."""
        if self.config.features is not None:
            features = ConceptFeatures.load(self.config.features)
        elif bundled is not None:
            features = ConceptFeatures.load(bundled)
        else:
            features = self._compute_features(name, sae_id, sae, hookpoint)
        features.concept = name
        return features

    def _use_pipeline(self, pipe: Any | None) -> None:
        cfg = self.config
        if pipe is not None:
            self.pipe = pipe
            self.device = next(denoiser(pipe).parameters()).device
            self.dtype = next(denoiser(pipe).parameters()).dtype
        else:
            self.device = cfg.sampling.torch_device()
            self.dtype = cfg.sampling.dtype_for(self.device)
            self.pipe = load_pipeline(cfg.resolved_model, device=self.device, dtype=self.dtype)
            # A pipeline the user hands over keeps its own scheduler.
            use_scheduler(self.pipe, cfg.sampling.scheduler)
        check_schedule(self.pipe, cfg.sampling.steps)

    def _init_recipe(self, pipe: Any | None) -> None:
        """Erase with ``self.recipe``: its concepts (or those named), its edits."""
        assert self.recipe is not None
        cfg = self.config
        names = cfg.concepts or self.recipe.names
        self.recipe = self.recipe.subset(names)
        cfg.erase_concept = CONCEPT_SEPARATOR.join(names)
        if pipe is None:
            # Device, model, sizes and every missing or changed file, before weights load.
            check_recipe_erasure(cfg.resolved_model, cfg.sampling, self.recipe)
        if cfg.recipe is not None and cfg.uses_paper_settings() and cfg.preset != "paper":
            # The recipe holds each edit's site, rule and strength.
            logger.warning("a recipe sets every edit: sae, hookpoint, features, multiplier, "
                           "rule and window are not used with it")  # fmt: skip
        logger.debug("erasing %s with the recipe at %s", ", ".join(names), self.recipe.root)
        self._use_pipeline(pipe)
        self._assets = RecipeAssets(self.recipe)
        # Files and base model, once: every erase() after reuses the check.
        self._assets.check(self.pipe, self.recipe)
        self.groups = []
        self.multipliers = {n: self.recipe.concepts[n].edits[0].strength for n in names}
        self._warned_unedited = False

    @classmethod
    def from_recipe(
        cls, recipe: Recipe | str | Path, pipe: Any | None = None, **config: Any
    ) -> SAeUron:
        """``SAeUron(recipe=...)``: erase the recipe's concepts (or ``erase_concept``)."""
        return cls(pipe=pipe, recipe=recipe, **config)

    # -- the first concept, for code that erases one ------------------------------------------

    @property
    def concept(self) -> ConceptFeatures:
        return self.concepts[0]

    @property
    def concepts(self) -> list[ConceptFeatures]:
        if self.recipe is not None:
            # With a recipe: each concept's features at its first edit.
            return [
                self._assets.features(e.features, n, e.hookpoint)
                for n in self.config.concepts
                for e in self.recipe.concepts[n].edits[:1]
            ]
        order = {name: i for i, name in enumerate(self.config.concepts)}
        found = [f for g in self.groups for f in g.concepts]
        return sorted(found, key=lambda f: order[f.concept])

    @property
    def sae(self) -> Sae:
        if self.recipe is not None:
            return self._assets.sae(self._first_edit())
        return self._group_of(self.concept.concept).sae

    @property
    def hookpoint(self) -> str:
        if self.recipe is not None:
            return self._first_edit().hookpoint
        return self._group_of(self.concept.concept).hookpoint

    def _first_edit(self) -> Edit:
        assert self.recipe is not None
        return self.recipe.concepts[self.config.concepts[0]].edits[0]

    @property
    def multiplier(self) -> float:
        return self.multipliers[self.concept.concept]

    def _group_of(self, concept: str) -> _Group:
        return next(g for g in self.groups if any(f.concept == concept for f in g.concepts))

    def _multiplier(self, features: ConceptFeatures) -> float:
        if self.config.multiplier is not None:
            return float(self.config.multiplier)
        tuned = features.meta.get("multiplier")
        return float(tuned if tuned is not None else DEFAULT_MULTIPLIER)

    def _compute_features(
        self, concept: str, sae_id: str, sae: Sae, hookpoint: str
    ) -> ConceptFeatures:
        cfg = self.config
        build = ConceptBuildConfig(
            concept=concept,
            # Both already resolved: the SAE id is the folder or hub id resolved_sae gave.
            model=cfg.resolved_model,
            sae=ResolvedModel(sae_id),
            hookpoint=hookpoint,
            method=cfg.feature_method,
            tau=cfg.num_features,
            sampling=cfg.sampling,
            guidance_half=cfg.guidance_half,
        )
        return build_concept(build, pipe=self.pipe, sae=sae)

    # -- erasing --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def erase(self) -> Iterator[Erasures]:
        """The erasure as a context manager on ``self.pipe`` (for calls made by hand): one
        :class:`~saeuron.erasure.erase.Erasure` per hookpoint, all removed on exit."""
        cfg = self.config
        if self.recipe is not None:
            with RecipeErasure(self.pipe, self.recipe, cfg.concepts, assets=self._assets) as done:
                yield Erasures(done.erasures)
            return
        with contextlib.ExitStack() as stack:
            erasures = [
                stack.enter_context(
                    erase(
                        self.pipe,
                        group.sae,
                        group.concepts,
                        multiplier={f.concept: self.multipliers[f.concept] for f in group.concepts},
                        guidance_half=cfg.guidance_half,
                        error_term=cfg.error_term,
                        rule=cfg.rule,
                        window=cfg.window,
                        hookpoint=group.hookpoint,
                        warn_unedited=False,
                    )
                )
                for group in self.groups
            ]
            yield Erasures(erasures)

    def generate(
        self,
        prompts: list[str] | str,
        seed: int | None = None,
        erase_concept: bool = True,
        seeds: list[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        progress: bool | StepProgress = False,
        **kw: Any,
    ) -> list[Any]:
        """Images for ``prompts``; prompt i uses seed ``seed + i`` when a seed is given, or
        ``seeds[i]`` (an image then depends on its own seed only, not on its position).
        ``num_inference_steps`` and ``guidance_scale`` override the config for this call.
        ``progress=True`` draws one bar over every denoising step of the call (or pass a
        :class:`~saeuron.models.progress.StepProgress` shared by several calls).

        The first call in which the erasure edited no token at all says so in a warning."""
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
            check_model_inputs(cfg.resolved_model, cfg.sampling)
        sampling = cfg.sampling
        if num_inference_steps is not None:
            check_schedule(self.pipe, sampling.steps)
        starts = range(0, len(prompts), sampling.batch_size)
        bar = progress if isinstance(progress, StepProgress) else None
        own_bar = bar is None and bool(progress)
        if own_bar:
            bar = StepProgress(len(starts) * sampling.steps, desc="sampling")
        images: list[Any] = []
        erasures: list[Erasure] = []
        try:
            for start in starts:
                batch = prompts[start : start + sampling.batch_size]
                generator = (
                    seed_generators(seeds[start : start + len(batch)])
                    if seeds is not None
                    else None
                )
                call = {**sampling.call_kwargs(), "generator": generator, **kw}
                context = self.erase() if erase_concept else contextlib.nullcontext(Erasures([]))
                with context as active:
                    out = bar.run(self.pipe, batch, **call) if bar else self.pipe(batch, **call)
                    images.extend(out.images)
                erasures.extend(active)
        finally:
            if own_bar and bar is not None:
                bar.close()
        if erase_concept and not self._warned_unedited:
            self._warned_unedited = warn_if_unedited(erasures)
        return images
