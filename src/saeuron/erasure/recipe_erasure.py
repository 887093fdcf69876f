"""A recipe attached to a pipeline: every edit of every concept, as erasures on the stock
pipeline, with one strength per concept from 0 (off) to 1 (the recipe's tuned strength).

    erasure = attach_recipe(pipe, Recipe.load("moon.json"))
    images = pipe(prompt).images
    erasure.set_strength("moon", 0.5)   # half-way from off to the tuned strength
    erasure.remove()

The edits of several concepts at the same site, rule, window and rows share one hook; an
``anchor`` edit whose anchor is erased too takes the next candidate the recipe lists, or
``ablate`` when none is left (:func:`~saeuron.erasure.recipe.resolve_anchors`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from saeuron.erasure.erase import Erasure
from saeuron.erasure.erase import attach as attach_features
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.recipe import (
    IDENTITY_STRENGTH,
    Edit,
    FeaturesRef,
    Recipe,
    module_fingerprint,
    resolve_anchors,
)
from saeuron.models.hookpoints import resolve_module
from saeuron.sae import Sae
from saeuron.utils.errors import ConfigError, FileFormatError

logger = logging.getLogger(__name__)


def pipeline_fingerprint(pipe: Any, hookpoints: Sequence[str]) -> str:
    """:func:`~saeuron.erasure.recipe.module_fingerprint` of ``pipe``'s modules."""
    shapes = {
        h: [(n, tuple(p.shape)) for n, p in resolve_module(pipe, h).named_parameters()]
        for h in set(hookpoints)
    }
    return module_fingerprint(shapes)


def recipe_hookpoints(recipe: Recipe) -> list[str]:
    return sorted({e.hookpoint for c in recipe.concepts.values() for e in c.edits})


def check_base_model(pipe: Any, recipe: Recipe) -> None:
    """Refuse a pipeline whose hooked modules differ in shape from the recipe's model."""
    recorded = recipe.base_model.fingerprint
    if recorded is None:
        return
    found = pipeline_fingerprint(pipe, recipe_hookpoints(recipe))
    if found != recorded:
        raise ConfigError(
            "recipe.base_model",
            f"the recipe was made for {recipe.base_model.id!r}, whose hooked modules "
            f"({', '.join(recipe_hookpoints(recipe))}) differ in shape from this pipeline's "
            f"(fingerprint {found[:12]}, recipe {recorded[:12]}); use the recipe's base model",
        )


def edit_strength(edit: Edit, strength: float) -> float:
    """The gamma of ``edit`` at slider ``strength`` (0: the rule's identity, 1: tuned)."""
    origin = IDENTITY_STRENGTH[edit.rule]
    return origin + strength * (edit.strength - origin)


class RecipeAssets:
    """The SAEs and features a recipe names, each loaded once and checked."""

    def __init__(self, recipe: Recipe, device: Any = None):
        self.recipe = recipe
        self.device = device
        self._saes: dict[tuple[str, str], Sae] = {}
        self._features: dict[str, ConceptFeatures] = {}
        self._checked: list[tuple[Any, Recipe]] = []

    def check(self, pipe: Any, recipe: Recipe) -> None:
        """``recipe``'s files (present, unchanged) and base model against ``pipe``: hashed and
        fingerprinted once per pair, not on every attach (a slider moves, a batch samples)."""
        if any(p is pipe and r is recipe for p, r in self._checked):
            return
        problems = recipe.check_files()
        if problems:
            raise FileNotFoundError("recipe: " + "; ".join(problems))
        check_base_model(pipe, recipe)
        self._checked.append((pipe, recipe))

    def sae(self, edit: Edit) -> Sae:
        source = str(self.recipe.resolve(edit.sae.path)) if edit.sae.path else edit.sae.hub
        if source is None:
            raise ConfigError("recipe.sae", f"the edit at {edit.hookpoint} names no SAE")
        key = (source, edit.hookpoint)
        if key not in self._saes:
            sae = Sae.from_pretrained(source, hookpoint=edit.hookpoint, device=self.device or "cpu")
            if edit.sae.fingerprint and sae.fingerprint() != edit.sae.fingerprint:
                raise FileFormatError(
                    source, f"is not the SAE the recipe was made with at {edit.hookpoint} "
                    f"(fingerprint {sae.fingerprint()[:16]}, recipe {edit.sae.fingerprint[:16]})"
                )  # fmt: skip
            sae.meta["hookpoint"] = edit.hookpoint
            self._saes[key] = sae
        return self._saes[key]

    def features(self, ref: FeaturesRef, concept: str, hookpoint: str) -> ConceptFeatures:
        path = str(self.recipe.resolve(ref.path))
        if path not in self._features:
            self._features[path] = ConceptFeatures.load(path, setting="recipe.features")
        features = self._features[path]
        # Each edit gets its own copy under the erased concept's name (a file may be shared).
        copy = ConceptFeatures(
            concept=concept, indices=features.indices, mean=features.mean,
            threshold=features.threshold, timesteps=features.timesteps,
            meta={**features.meta, "hookpoint": hookpoint}, retain=features.retain,
        )  # fmt: skip
        return copy


class RecipeErasure:
    """A recipe attached to ``pipe`` until :meth:`remove` (see the module's doc)."""

    def __init__(
        self,
        pipe: Any,
        recipe: Recipe,
        concepts: Sequence[str] | None = None,
        strengths: Mapping[str, float] | None = None,
        assets: RecipeAssets | None = None,
    ):
        self.pipe = pipe
        self.recipe = recipe
        names = list(concepts) if concepts is not None else recipe.names
        unknown = [c for c in names if c not in recipe.concepts]
        if unknown:
            raise ConfigError(
                "erase", f"{unknown} not in the recipe; it holds {', '.join(recipe.names)}"
            )
        self.assets = assets or RecipeAssets(recipe)
        self.assets.check(pipe, recipe)
        self._strengths = {c: 1.0 for c in names}
        for name, value in (strengths or {}).items():
            self._check_strength(name, value)
            self._strengths[name] = float(value)
        self.erasures: list[Erasure] = []
        self._attached = True
        self._build()

    # -- the erasures ------------------------------------------------------------------------

    def _build(self) -> None:
        self._detach_all()
        active = [c for c, s in self._strengths.items() if s > 0]
        groups: dict[tuple[Any, ...], dict[str, tuple[ConceptFeatures, float]]] = {}
        sae_of: dict[tuple[Any, ...], Sae] = {}
        for concept, edits in resolve_anchors(self.recipe, active).items():
            for edit, anchor in edits:
                rule = edit.rule if edit.rule != "anchor" or anchor else "ablate"
                features = self.assets.features(edit.features, concept, edit.hookpoint)
                if rule == "anchor":
                    ref = next(a.features for a in edit.anchors if a.concept == anchor)
                    features = features.with_anchor(
                        self.assets.features(ref, str(anchor), edit.hookpoint)
                    )
                sae = self.assets.sae(edit)
                window = tuple(edit.window) if edit.window else None
                base = (
                    edit.hookpoint, edit.activation_site, rule, window, edit.guidance_half, id(sae)
                )  # fmt: skip
                # One hook holds a concept once: a second edit of it at the same site and
                # rule gets a hook of its own.
                n = 0
                while concept in groups.get((*base, n), {}):
                    n += 1
                key = (*base, n)
                groups.setdefault(key, {})[concept] = (
                    features, edit_strength(edit, self._strengths[concept])
                )
                sae_of[key] = sae
        for key, members in groups.items():
            hookpoint, site, rule, window, halves = key[:5]
            try:
                self.erasures.append(
                    attach_features(
                        self.pipe, sae_of[key], [f for f, _ in members.values()],
                        multiplier={c: g for c, (_, g) in members.items()},
                        hookpoint=hookpoint, activation_site=site, rule=rule,
                        window=list(window) if window else None, guidance_half=halves,
                    )
                )  # fmt: skip
            except BaseException:
                self._detach_all()
                raise

    def _detach_all(self) -> None:
        for erasure in self.erasures:
            erasure.remove()
        self.erasures = []

    def _check_strength(self, concept: str, value: float) -> None:
        if concept not in self._strengths:
            raise ConfigError(
                "strength", f"got {concept!r}; this erasure holds {', '.join(self._strengths)}"
            )
        if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ConfigError(
                f"strength.{concept}", f"got {value!r}; need a number from 0 (off) to 1 (tuned)"
            )

    # -- the public surface -------------------------------------------------------------------

    @property
    def concepts(self) -> list[str]:
        return list(self._strengths)

    @property
    def strengths(self) -> dict[str, float]:
        return dict(self._strengths)

    def set_strength(self, concept: str, value: float) -> None:
        """0: the concept is not erased; 1: every edit at its tuned strength; between, each
        edit's gamma moves from its rule's identity to the tuned value."""
        self._check_strength(concept, value)
        if not self._attached:
            raise ConfigError("erasure", "this erasure was removed; attach the recipe again")
        self._strengths[concept] = float(value)
        self._build()

    @property
    def calls(self) -> int:
        return sum(e.calls for e in self.erasures)

    @property
    def edited_tokens(self) -> int:
        return sum(e.edited_tokens for e in self.erasures)

    @property
    def attached(self) -> bool:
        return self._attached

    def remove(self) -> None:
        """Take every hook off; the pipeline samples exactly as before."""
        self._detach_all()
        self._attached = False

    def __iter__(self) -> Iterator[Erasure]:
        return iter(self.erasures)

    def __enter__(self) -> RecipeErasure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach_recipe(
    pipe: Any,
    recipe: Recipe | str | Path,
    concepts: Sequence[str] | None = None,
    strengths: Mapping[str, float] | None = None,
) -> RecipeErasure:
    """Erase ``concepts`` (default: all) of ``recipe`` (a :class:`Recipe`, a file, or a hub
    id) in ``pipe`` until :meth:`RecipeErasure.remove`."""
    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    return RecipeErasure(pipe, recipe, concepts, strengths)


def attach(
    pipe: Any,
    what: Recipe | str | Path | Sae,
    concepts: Any = None,
    config: Any = None,
    **overrides: Any,
) -> RecipeErasure | Erasure:
    """``saeuron.attach``: erase until ``.remove()``.

    ``attach(pipe, recipe)`` (a :class:`~saeuron.erasure.recipe.Recipe`, a recipe file or
    folder, or a hub id; ``concepts`` picks some of its concepts, ``strengths={name: 0..1}``
    sets each) returns a :class:`RecipeErasure`; ``attach(pipe, sae, features, ...)`` edits
    ``features`` with one loaded SAE (:func:`saeuron.erasure.erase.attach`).
    """
    if isinstance(what, (Recipe, str, Path)):
        if config is not None or set(overrides) - {"strengths"}:
            raise ConfigError(
                "attach", "a recipe holds its own settings; pass only concepts and strengths"
            )
        return attach_recipe(pipe, what, concepts, overrides.get("strengths"))
    return attach_features(pipe, what, concepts, config, **overrides)
