"""The slider's logic, with no page: a shared :class:`Studio` and one :class:`Session` per user.

The studio holds what every user shares and nobody chooses: the pipeline, the SAEs and the
features of concepts (bundled, or computed once for a free-text phrase). A session holds one
user's choices and the images already made for them; the page keeps it in a per-browser
``gr.State``, so two browsers never see each other's choices.

Every pipeline call runs under one lock: the erase hooks live on the shared pipeline while a
call runs, and a second call at the same time would sample through them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.erase import GUIDANCE_HALVES, erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.recipe import Recipe
from saeuron.erasure.recipe_erasure import RecipeAssets, RecipeErasure
from saeuron.erasure.technique import DEFAULT_MULTIPLIER, RECIPES_DIR
from saeuron.models.bundles import Bundle
from saeuron.models.defaults import model_defaults
from saeuron.models.denoiser import denoiser_device
from saeuron.models.pipelines import load_pipeline
from saeuron.models.sampling import SamplingConfig
from saeuron.sae import Sae
from saeuron.ui.config import MAX_GUIDANCE, MAX_SEED, MIN_GUIDANCE, UiConfig
from saeuron.utils.config import ConfigError, check_choice, check_range

logger = logging.getLogger(__name__)

Layer = tuple[str, float]
"""One stacked concept and its multiplier (gamma)."""

DISPLAY_SIZE = 256
"""Small models' images are enlarged (nearest neighbour) to about this many pixels a side."""


@dataclass(frozen=True)
class Settings:
    """What the unerased image depends on: equal settings give bit-identical images."""

    prompt: str
    steps: int
    seed: int = 0
    guidance_scale: float = 7.5
    batch: int = 1


def _kind_order(bundle: Bundle | None, names: list[str]) -> list[str]:
    """A bundle's concepts in its own order (kind by kind), others alphabetically."""
    if bundle is not None:
        order = [name for kind in bundle.kinds().values() for name in kind]
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))
    return sorted(names)


class Studio:
    """Loads the model once and samples it with any stack of concepts erased."""

    def __init__(self, config: UiConfig, pipe: Any | None = None):
        self.config = config
        self._lock = threading.Lock()
        self._saes: dict[tuple[str, str], Sae] = {}
        self._features: dict[str, tuple[ConceptFeatures, str, str]] = {}
        start = time.perf_counter()
        # The config resolved the model when it was built: nothing here looks it up again.
        self.model = config.resolved_model
        self.pipe = pipe if pipe is not None else load_pipeline(self.model, device=config.device)
        self.device = denoiser_device(self.pipe)
        self.recipe = load_ui_recipe(config)
        self._recipe_assets: RecipeAssets | None = None
        if self.recipe is not None:
            self._recipe_assets = RecipeAssets(self.recipe)
            self._recipe_assets.check(self.pipe, self.recipe)
        logger.info("model %s ready in %.1f s", config.model, time.perf_counter() - start)

    def warm_up(self) -> float:
        """One 1-step sample through every bundled SAE, so the first request on the page is
        as fast as the rest (the first call through torch's CPU kernels is several times
        slower, and SAEs load on first use). Returns the seconds it took."""
        start = time.perf_counter()
        by_hookpoint: dict[str, str] = {}
        for concept in self.bundled_concepts():
            by_hookpoint.setdefault(self._sae_for(concept)[1] or "", concept)
        # A recipe's concept takes a strength from 0 to 1; any other a multiplier.
        recipe = set(self.recipe_concepts())
        layers = [(c, 1.0 if c in recipe else -1.0) for c in by_hookpoint.values()]
        self.generate(Settings(prompt="warm-up", steps=1), layers)
        seconds = time.perf_counter() - start
        logger.info("warmed up in %.1f s", seconds)
        return seconds

    # -- what can be erased -------------------------------------------------------------------

    def recipe_concepts(self) -> list[str]:
        """The recipe's concepts (empty without ``--recipe``): each gets a 0..1 slider."""
        return self.recipe.names if self.recipe is not None else []

    def bundled_concepts(self) -> list[str]:
        """Concepts whose features ship with the model (empty for non-bundled models)."""
        bundle = self.model.bundle
        if bundle is None or self.config.sae is not None:
            return []
        names = {p.stem for p in (bundle.folder / bundle.features).glob("*/*.safetensors")}
        return _kind_order(bundle, list(names))

    def _bundled_path(self, concept: str) -> Path | None:
        if self.config.sae is not None:
            return None
        bundle = self.model.bundle
        return bundle.features_path(concept, self.config.hookpoint) if bundle else None

    def _sae_for(self, concept: str) -> tuple[str, str | None]:
        cfg = self.config
        if cfg.sae is not None:
            return cfg.sae, cfg.hookpoint
        bundle = self.model.bundle
        if bundle is not None:
            return str(bundle.sae_folder), cfg.hookpoint or bundle.hookpoint_for(concept)
        defaults = model_defaults(self.model)
        if defaults.sae is None:
            raise ConfigError("sae", f"no SAE is known for model {cfg.model!r}; name one")
        return defaults.sae, cfg.hookpoint or defaults.hookpoint

    def _sae(self, sae_id: str, hookpoint: str | None) -> Sae:
        key = (sae_id, hookpoint or "")
        if key not in self._saes:
            sae = Sae.from_pretrained(sae_id, hookpoint=hookpoint, device=self.device)
            if hookpoint:
                sae.meta["hookpoint"] = hookpoint
            if not sae.meta.get("hookpoint"):
                raise ConfigError("hookpoint", f"the SAE {sae_id} does not say where it reads")
            self._saes[key] = sae
        return self._saes[key]

    def default_multiplier(self, concept: str) -> float:
        """The tuned multiplier of a bundled concept, else SAeUron's default."""
        name = concept.strip().lower()
        if name in self.recipe_concepts():
            return 1.0
        path = self._bundled_path(name) if name else None
        if path is None:
            return DEFAULT_MULTIPLIER
        tuned = ConceptFeatures.load(path).meta.get("multiplier")
        return float(tuned) if tuned is not None else DEFAULT_MULTIPLIER

    def is_cached(self, concept: str) -> bool:
        name = concept.strip().lower()
        return (
            name in self._features or name in self.recipe_concepts()
            or self._bundled_path(name) is not None
        )  # fmt: skip

    def features(self, concept: str) -> tuple[ConceptFeatures, Sae, str]:
        """A concept's features, its SAE and hookpoint; a free-text concept's features are
        computed on first use (shortcut method; tqdm reports progress) and kept for everyone."""
        name = concept.strip().lower()
        if name not in self._features:
            sae_id, hookpoint = self._sae_for(name)
            sae = self._sae(sae_id, hookpoint)
            hookpoint = sae.meta["hookpoint"]
            path = self._bundled_path(name)
            if path is not None:
                features = ConceptFeatures.load(path)
            else:
                features = self._build(name, sae_id, sae, hookpoint)
            features.concept = name
            self._features[name] = (features, sae_id, hookpoint)
        features, sae_id, hookpoint = self._features[name]
        return features, self._sae(sae_id, hookpoint), hookpoint

    def _build(self, name: str, sae_id: str, sae: Sae, hookpoint: str) -> ConceptFeatures:
        cfg = self.config
        logger.info("concept %r has no bundled features: computing them", name)
        start = time.perf_counter()
        # The statistics' own schedule; they map onto any number of sampling steps.
        steps = 20
        build = ConceptBuildConfig(
            concept=name,
            model=self.model,
            sae=sae_id,
            hookpoint=hookpoint,
            method="shortcut",
            shortcut_images=cfg.feature_images,
            sampling=SamplingConfig(
                num_inference_steps=steps, guidance_scale=7.5, device=str(self.device)
            ),
        )
        features = build_concept(build, pipe=self.pipe, sae=sae)
        logger.info("features of %r in %.1f s", name, time.perf_counter() - start)
        return features

    # -- requests -----------------------------------------------------------------------------

    def check(self, settings: Settings) -> Settings:
        """The settings, trimmed, or ConfigError naming the field out of bounds.

        Values come from a browser: anything (None, text, NaN, a huge number) is refused
        with the field's name, never passed on to the model.
        """
        cfg = self.config
        prompt = settings.prompt.strip() if isinstance(settings.prompt, str) else ""
        if not prompt:
            raise ConfigError("prompt", "must not be empty")
        if len(prompt) > cfg.max_prompt_chars:
            raise ConfigError(
                "prompt", f"{len(prompt)} characters; at most {cfg.max_prompt_chars} allowed"
            )
        steps = _whole("steps", settings.steps, 1, cfg.max_steps)
        seed = _whole("seed", settings.seed, 0, MAX_SEED)
        batch = _whole("batch", settings.batch, 1, cfg.max_batch)
        guidance = _number("guidance_scale", settings.guidance_scale, MIN_GUIDANCE, MAX_GUIDANCE)
        return Settings(prompt=prompt, steps=steps, seed=seed, guidance_scale=guidance, batch=batch)

    def check_layers(
        self, layers: Sequence[Layer], guidance_half: str, guidance_scale: float
    ) -> list[Layer]:
        """The stack without empty rows, names normalised, or ConfigError naming the field."""
        cfg = self.config
        check_choice("guidance_half", guidance_half, GUIDANCE_HALVES)
        out: list[Layer] = []
        for concept, multiplier in layers:
            if concept is not None and not isinstance(concept, str):
                raise ConfigError("concept", f"got {concept!r}; expected text")
            name = (concept or "").strip().lower()
            if not name:
                continue
            if len(name) > cfg.max_concept_chars:
                raise ConfigError(
                    "concept", f"{name[:20]!r}...: at most {cfg.max_concept_chars} characters"
                )
            if name in self.recipe_concepts():
                # A recipe's concept: its strength, from off (0) to the tuned edit (1).
                out.append((name, _number("strength", multiplier, 0.0, 1.0)))
                continue
            gamma = _number("multiplier", multiplier, -cfg.max_multiplier, cfg.max_multiplier)
            out.append((name, gamma))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise ConfigError("concepts", f"each concept may be stacked once; got {names}")
        if len(out) > cfg.max_concepts:
            raise ConfigError("concepts", f"{len(out)} stacked; at most {cfg.max_concepts}")
        if out and guidance_half == "cond" and not guidance_scale > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {guidance_scale}; must be > 1 when guidance_half is 'cond' (it edits the "
                "conditional half of the CFG batch); raise it or pick guidance_half 'both'",
            )
        return out

    def generate(
        self, settings: Settings, layers: Sequence[Layer] = (), guidance_half: str = "cond"
    ) -> list[Image.Image]:
        """Images of ``settings`` with the stacked concepts erased (none: the plain model).

        Image i uses seed ``settings.seed + i``. Concepts that live at different hookpoints
        (MiniCanvas: objects and styles) get one erase per (SAE, hookpoint), nested.
        """
        settings = self.check(settings)
        layers = self.check_layers(layers, guidance_half, settings.guidance_scale)
        with self._lock:
            groups: dict[tuple[int, str], tuple[Sae, list[ConceptFeatures], dict[str, float]]]
            groups = {}
            strengths = {n: s for n, s in layers if n in self.recipe_concepts()}
            for name, multiplier in layers:
                if name in strengths:
                    continue
                features, sae, hookpoint = self.features(name)
                _, members, gammas = groups.setdefault((id(sae), hookpoint), (sae, [], {}))
                members.append(features)
                gammas[name] = multiplier
            start = time.perf_counter()
            with contextlib.ExitStack() as stack:
                if strengths and self.recipe is not None:
                    stack.enter_context(RecipeErasure(
                        self.pipe, self.recipe, list(strengths), strengths,
                        assets=self._recipe_assets,
                    ))  # fmt: skip
                for (_, hookpoint), (sae, members, gammas) in groups.items():
                    stack.enter_context(
                        erase(self.pipe, sae, members, multiplier=gammas,
                              guidance_half=guidance_half, hookpoint=hookpoint,
                              warn_unedited=False)
                    )  # fmt: skip
                generators = [
                    torch.Generator("cpu").manual_seed(settings.seed + i)
                    for i in range(settings.batch)
                ]
                images = self.pipe(
                    [settings.prompt] * settings.batch,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    generator=generators,
                ).images
            logger.info(
                "%d image(s), %d steps, erased %s: %.2f s",
                settings.batch, settings.steps, layers or "nothing", time.perf_counter() - start,
            )  # fmt: skip
            return images


def load_ui_recipe(config: UiConfig) -> Recipe | None:
    """``--recipe``: a file, folder or hub id; ``bundled``: the model bundle's recipes."""
    if config.recipe is None:
        return None
    if config.recipe == "bundled":
        bundle = config.resolved_model.bundle
        if bundle is None or not (bundle.folder / RECIPES_DIR).is_dir():
            raise ConfigError("recipe", f"{config.model!r} ships no recipes; name a recipe file")
        return Recipe.load(bundle.folder / RECIPES_DIR)
    return Recipe.load(config.recipe)


def _number(name: str, value: Any, low: float, high: float) -> float:
    """A finite number within [low, high] from whatever the page sent."""
    if isinstance(value, bool) or value is None:
        raise ConfigError(name, f"got {value!r}; expected a number from {low:g} to {high:g}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            name, f"got {value!r}; expected a number from {low:g} to {high:g}"
        ) from None
    check_range(name, number, ge=low, le=high)
    return number


def _whole(name: str, value: Any, low: int, high: int) -> int:
    number = _number(name, value, low, high)
    if not number.is_integer():
        raise ConfigError(name, f"got {value!r}; must be a whole number")
    return int(number)


@dataclass
class Session:
    """One user's last images; the page keeps it in ``gr.State`` (copied per browser)."""

    unerased_key: Settings | None = None
    unerased: list[Image.Image] | None = None
    erased_key: tuple[Any, ...] | None = None
    erased: list[Image.Image] | None = None
    rows: int = 1
    """How many concept rows the page shows."""
    last: dict[str, float] = field(default_factory=dict)
    """Seconds the last renders took, by image ("unerased", "erased")."""

    def render_unerased(self, studio: Studio, settings: Settings) -> list[Image.Image]:
        """The image without erasure; sampled again only when its settings change."""
        settings = studio.check(settings)
        if self.unerased_key != settings or self.unerased is None:
            start = time.perf_counter()
            self.unerased = studio.generate(settings)
            self.unerased_key = settings
            self.last["unerased"] = time.perf_counter() - start
        return self.unerased

    def render_erased(
        self,
        studio: Studio,
        settings: Settings,
        layers: Sequence[Layer],
        guidance_half: str = "cond",
    ) -> list[Image.Image]:
        """The image with ``layers`` erased; the same request twice samples once."""
        settings = studio.check(settings)
        layers = studio.check_layers(layers, guidance_half, settings.guidance_scale)
        key = (settings, tuple(layers), guidance_half)
        if self.erased_key != key or self.erased is None:
            start = time.perf_counter()
            self.erased = studio.generate(settings, layers, guidance_half=guidance_half)
            self.erased_key = key
            self.last["erased"] = time.perf_counter() - start
        return self.erased


def contact_sheet(images: Sequence[Image.Image], size: int = DISPLAY_SIZE) -> Image.Image:
    """The images side by side, small ones enlarged without smoothing so pixels stay crisp."""
    first = images[0]
    scale = max(1, size // max(first.width, first.height))
    width, height = first.width * scale, first.height * scale
    gap = 4 if len(images) > 1 else 0
    sheet = Image.new("RGB", (len(images) * width + (len(images) - 1) * gap, height), "white")
    for i, image in enumerate(images):
        big = image.convert("RGB").resize((width, height), Image.Resampling.NEAREST)
        sheet.paste(big, (i * (width + gap), 0))
    return sheet
