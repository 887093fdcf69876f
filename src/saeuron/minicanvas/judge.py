"""Judging MiniCanvas images: sample prompt sets (optionally under an erasure), classify them.

The UnlearnCanvas protocol (Zhang et al., 2024) as SAeUron applies it, on MiniCanvas: for a
concept erased in turn, images of every (object, style) prompt are judged by the bundled
classifier:

- style erased:  UA = 1 - style accuracy on the target style's prompts, IRA = style accuracy
  on the other styles' prompts, CRA = object accuracy on all of them;
- object erased: UA = 1 - object accuracy on the target object's prompts, IRA = object
  accuracy on the other objects' prompts, CRA = style accuracy on all of them.

Beside them, two measures of whether the concept is gone or only its word:

- UA-alias: UA on the target prompts written with the concept's test-only other name;
- two-object scenes ("An image of a {object} and a {object2} in {style} style."): for an
  object erased, in-scene UA = the scene head no longer finds it, in-scene retention = it
  still finds the other object; for a style erased, in-scene UA = the style head no longer
  sees the style, in-scene retention = both objects are still found (each counts).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from saeuron.erasure.erase import erase
from saeuron.erasure.features import SAE_FINGERPRINT, ConceptFeatures
from saeuron.erasure.recipe_erasure import RecipeErasure
from saeuron.erasure.technique import RECIPES_DIR, bundle_recipe
from saeuron.minicanvas.assets import (
    SUPERVISED_SAES,
    bundle_folder,
    concept_hookpoint,
    concept_kind,
    select_features,
    supervised_features_path,
)

# The benchmark's variants live with its torch-free settings; they stay importable from here.
from saeuron.minicanvas.bench_config import VARIANT_LABELS as VARIANT_LABELS
from saeuron.minicanvas.bench_config import VARIANTS as VARIANTS
from saeuron.minicanvas.classifier import PRESENT, MiniCanvasClassifier
from saeuron.minicanvas.scoring import unlearning_scores
from saeuron.minicanvas.world import (
    OBJECTS,
    SCENE_TEST_TEMPLATES,
    STYLES,
    TEST_TEMPLATES,
    caption,
    name,
)
from saeuron.models.pipelines import load_pipeline
from saeuron.models.progress import StepProgress
from saeuron.models.resolve import ModelArg, resolve_model
from saeuron.models.sampling import seed_generators
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError
from saeuron.utils.files import BUNDLE_FEATURES_DIR, BUNDLE_STATS_DIR


@dataclass
class Judged:
    """Classifier verdicts for a set of generated images."""

    objects: np.ndarray
    styles: np.ndarray
    true_objects: np.ndarray
    true_styles: np.ndarray
    images: list[Any]


def _one_hookpoint(concepts: Sequence[str]) -> str:
    """The hookpoint of concepts erased together: one kind, one block, one SAE."""
    hookpoints = {concept_hookpoint(c) for c in concepts}
    if len(hookpoints) != 1:
        raise ConfigError("concepts", f"erase concepts of one kind at a time: {concepts}")
    return hookpoints.pop()


class MiniCanvasJudge:
    """Generates prompt sets (optionally under an erasure) and classifies the images."""

    def __init__(self, model: ModelArg = "minicanvas", steps: int = 20, guidance: float = 7.5):
        # A public constructor: the model is resolved here, once (as it is when given resolved).
        resolved = resolve_model(model)
        self.folder = bundle_folder(resolved)
        self.pipe = load_pipeline(resolved, device="cpu", dtype=torch.float32)
        self.classifier = MiniCanvasClassifier.load(self.folder / "classifier")
        self.saes = {
            hp: Sae.from_pretrained(self.folder / "saes", hookpoint=hp)
            for hp in {concept_hookpoint(o) for o in OBJECTS}
            | {concept_hookpoint(s) for s in STYLES}
        }
        self.steps, self.guidance = steps, guidance
        self._stats: dict[str, Any] = {}
        self._supervised: dict[str, Any] = {}

    def features(self, concept: str, tau: int, max_other_ratio: float | None = None):
        """The concept's contrastive features with ``tau`` latents per step: selected from
        the bundle's statistics, or, in an install without them (the wheel ships none), its
        shipped features when they were selected with the same settings."""
        if (self.folder / BUNDLE_STATS_DIR).is_dir():
            features = select_features(self.folder, concept, tau, self._stats, max_other_ratio)
            # The bundle's statistics were taken with its own SAE: the features say so, and
            # erase checks them against it.
            features.meta[SAE_FINGERPRINT] = self.saes[concept_hookpoint(concept)].fingerprint()
            return features
        path = self.folder / BUNDLE_FEATURES_DIR / concept_hookpoint(concept) / concept
        if path.with_suffix(".json").is_file():
            shipped = ConceptFeatures.load(path)
            if (shipped.meta.get("tau"), shipped.meta.get("max_other_ratio")) == (
                tau,
                max_other_ratio,
            ):
                return shipped
        raise FileNotFoundError(
            f"no statistics in {self.folder / BUNDLE_STATS_DIR} to select {concept!r} with "
            f"tau {tau} (this install ships the tuned features only): rebuild them with "
            "`saeuron minicanvas assets --out DIR`, or use the full bundle from the hub"
        )

    @contextlib.contextmanager
    def erase(
        self,
        concept: str,
        tau: int,
        multiplier: float,
        guidance_half: str = "cond",
        error: str = "exact",
        max_other_ratio: float | None = None,
    ) -> Iterator[None]:

        hookpoint = concept_hookpoint(concept)
        with erase(
            self.pipe,
            self.saes[hookpoint],
            self.features(concept, tau, max_other_ratio),
            multiplier=multiplier,
            guidance_half=guidance_half,
            error_term=error,
            hookpoint=hookpoint,
            warn_unedited=False,
        ):
            yield

    @contextlib.contextmanager
    def erase_recipes(self, concepts: Sequence[str]) -> Iterator[RecipeErasure]:
        """``concepts`` erased together with the bundle's recipes (what ``SAeUron`` does by
        default), anchors resolved among them."""
        recipe = bundle_recipe(self.folder, concepts)
        if recipe is None:
            folder = self.folder / RECIPES_DIR
            missing = [c for c in concepts if not (folder / f"{c}.json").is_file()]
            raise FileNotFoundError(
                f"no recipe for {missing} in {self.folder / RECIPES_DIR}: make them with "
                "`saeuron tune` (scripts/minicanvas_recipes.sh)"
            )
        with RecipeErasure(self.pipe, recipe, list(concepts)) as erasure:
            yield erasure

    def supervised_sae(self, hookpoint: str) -> Any:
        if hookpoint not in self._supervised:
            folder = self.folder / SUPERVISED_SAES
            if not (folder / hookpoint).is_dir():
                raise FileNotFoundError(
                    f"no supervised SAE at {folder / hookpoint}: run `saeuron minicanvas "
                    "saemnesia build`"
                )
            self._supervised[hookpoint] = Sae.from_pretrained(folder, hookpoint=hookpoint)
        return self._supervised[hookpoint]

    @contextlib.contextmanager
    def erase_supervised(self, concepts: Sequence[str], multipliers: dict[str, float]):
        """SAEmnesia: each concept is its one latent of the supervised SAE."""
        hookpoint = _one_hookpoint(concepts)
        features = [
            ConceptFeatures.load(supervised_features_path(self.folder, c)) for c in concepts
        ]
        with erase(
            self.pipe, self.supervised_sae(hookpoint), features,
            multiplier={c: float(multipliers[c]) for c in concepts}, hookpoint=hookpoint,
            warn_unedited=False,
        ):  # fmt: skip
            yield

    @contextlib.contextmanager
    def erasing_many(
        self, concepts: Sequence[str], params: dict[str, dict[str, Any]]
    ) -> Iterator[None]:
        """Several concepts of one kind at once, each with its tuned tau, gamma and filter."""

        hookpoint = _one_hookpoint(concepts)
        features = [
            self.features(c, int(params[c]["tau"]), params[c].get("max_other_ratio"))
            for c in concepts
        ]
        for f, c in zip(features, concepts):
            f.concept = c
        with erase(
            self.pipe, self.saes[hookpoint], features,
            multiplier={c: float(params[c]["multiplier"]) for c in concepts},
            hookpoint=hookpoint, warn_unedited=False,
        ):  # fmt: skip
            yield

    def run(
        self,
        rows: Sequence[tuple[str, int, int, int]],
        negative: str | None = None,
        batch_size: int = 50,
        desc: str = "images",
        progress: StepProgress | None = None,
    ) -> Judged:
        """``rows``: (prompt, object, style, seed). Images are sampled in batches; the steps
        count on ``progress`` when given (one bar for a whole job), else on a bar of batches."""
        images: list[Any] = []
        starts = range(0, len(rows), batch_size)
        for start in starts if progress else tqdm(starts, desc=desc, unit="batch", leave=False):
            chunk = rows[start : start + batch_size]
            generators = seed_generators([seed for _, _, _, seed in chunk])
            sample = progress.run if progress else (lambda pipe, *a, **k: pipe(*a, **k))
            images += sample(
                self.pipe,
                [prompt for prompt, _, _, _ in chunk],
                negative_prompt=[negative] * len(chunk) if negative else None,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance,
                generator=generators,
            ).images
        objects, styles = self.classifier.predict(images)
        return Judged(
            objects,
            styles,
            np.array([r[1] for r in rows]),
            np.array([r[2] for r in rows]),
            images,
        )

    def run_scenes(
        self, rows: Sequence[SceneRow], batch_size: int = 50, desc: str = "scenes"
    ) -> JudgedScenes:
        """Two-object scenes, judged by the scene head (which objects) and the style head."""
        judged = self.run(
            [(prompt, a, style, seed) for prompt, (a, _), style, seed in rows],
            batch_size=batch_size,
            desc=desc,
        )
        return JudgedScenes(
            present=self.classifier.detect(judged.images) >= PRESENT,
            styles=judged.styles,
            true_objects=np.array([pair for _, pair, _, _ in rows]).reshape(-1, 2),
            true_styles=judged.true_styles,
            images=judged.images,
        )


SceneRow = tuple[str, tuple[int, int], int, int]
"""``(prompt, (object, object), style, seed)``."""


@dataclass
class JudgedScenes:
    """Classifier verdicts for two-object scenes: which objects are present, which style."""

    present: np.ndarray
    styles: np.ndarray
    true_objects: np.ndarray
    true_styles: np.ndarray
    images: list[Any]

    @property
    def found(self) -> np.ndarray:
        """``[N, 2]``: whether each of a scene's two named objects was found."""
        rows = np.arange(len(self.present))[:, None]
        return self.present[rows, self.true_objects]


def alias_rows(
    concept: str, seeds: Sequence[int], template: str = TEST_TEMPLATES[0],
    naming: str = "test_only",
) -> list[tuple[str, int, int, int]]:  # fmt: skip
    """The concept's target prompts, written with another of its names."""
    kind, index = _concept_index(concept)
    rows = prompt_rows(template, seeds, only=(kind, index))
    other = name(concept, naming)
    return [
        (
            caption(
                other if kind == "object" else OBJECTS[o],
                other if kind == "style" else STYLES[s],
                template,
            ),
            o, s, seed,
        )  # fmt: skip
        for _, o, s, seed in rows
    ]


def scene_rows(
    concept: str, seeds: Sequence[int], template: str = SCENE_TEST_TEMPLATES[0]
) -> list[SceneRow]:
    """Ten two-object scenes per seed that hold the concept: an object beside each of nine
    others in every style (in turn first and second), or a style on ten pairs of objects."""
    kind, index = _concept_index(concept)
    n = len(OBJECTS)
    rows: list[SceneRow] = []
    for r, seed in enumerate(seed for seed in seeds for _ in range(10)):
        if kind == "object":
            pair = (index, (index + 1 + r % (n - 1)) % n)
            style = r % len(STYLES)
            if r % 2:
                pair = (pair[1], pair[0])
        else:
            first = r % n
            pair, style = (first, (first + 1 + (index + r) % (n - 1)) % n), index
        prompt = caption(OBJECTS[pair[0]], STYLES[style], template, OBJECTS[pair[1]])
        rows.append((prompt, pair, style, seed))
    return rows


def scene_scores(concept: str, scenes: JudgedScenes) -> dict[str, float]:
    """In-scene UA and retention (see the module's doc); NaN without scenes."""
    kind, index = _concept_index(concept)
    if not len(scenes.present):
        return {"scene_UA": float("nan"), "scene_retention": float("nan"), "n_scenes": 0}
    if kind == "object":
        gone = ~scenes.present[:, index]
        kept = scenes.found[scenes.true_objects != index]
    else:
        gone = scenes.styles != index
        kept = scenes.found
    return {
        "scene_UA": float(gone.mean()),
        "scene_retention": float(kept.mean()),
        "n_scenes": len(scenes.present),
    }


def scene_following(scenes: JudgedScenes) -> dict[str, float]:
    """How often the unerased model draws both objects (and the style) a scene asks for."""
    return {
        "both_objects": float(scenes.found.all(axis=1).mean()),
        "each_object": float(scenes.found.mean()),
        "style_accuracy": float((scenes.styles == scenes.true_styles).mean()),
        "n_scenes": len(scenes.present),
    }


def prompt_rows(
    template: str, seeds: Sequence[int], only: tuple[str, int] | None = None, exclude: bool = False
) -> list[tuple[str, int, int, int]]:
    """Prompts of every (object, style) pair with each seed, optionally filtered by concept."""
    rows = []
    for (i, obj), (j, style), seed in itertools.product(
        enumerate(OBJECTS), enumerate(STYLES), seeds
    ):
        if only is not None:
            kind, index = only
            hit = (i if kind == "object" else j) == index
            if hit == exclude:
                continue
        rows.append((template.format(object=obj, style=style), i, j, seed))
    return rows


def diagonal_subset(
    rows: Sequence[tuple[str, int, int, int]], every: int
) -> list[tuple[str, int, int, int]]:
    """About one row in ``every``, chosen so that every object and every style stays in."""
    return [row for row in rows if (row[1] + row[2]) % every == 0]


def subset(judged: Judged, mask: np.ndarray) -> Judged:
    return Judged(
        judged.objects[mask],
        judged.styles[mask],
        judged.true_objects[mask],
        judged.true_styles[mask],
        [image for image, keep in zip(judged.images, mask, strict=True) if keep],
    )


def split_baseline(
    baseline: Judged,
    seeds_of: np.ndarray,
    concept: str,
    seeds: Sequence[int],
    retain_seeds: int,
    retain_every: int = 1,
) -> tuple[Judged, Judged]:
    """Target and retain images of ``concept`` out of one unerased run over every pair."""
    kind, index = _concept_index(concept)
    hit = (baseline.true_objects if kind == "object" else baseline.true_styles) == index
    target = hit & np.isin(seeds_of, list(seeds))
    retain = ~hit & np.isin(seeds_of, list(seeds[:retain_seeds]))
    # The same rows diagonal_subset keeps.
    retain &= (baseline.true_objects + baseline.true_styles) % retain_every == 0
    return subset(baseline, target), subset(baseline, retain)


def scores(concept: str, target: Judged, retain: Judged) -> dict[str, float]:
    kind = concept_kind(concept)
    same = "objects" if kind == "object" else "styles"
    cross = "styles" if kind == "object" else "objects"

    def acc(judged: Judged, head: str) -> np.ndarray:
        return getattr(judged, head) == getattr(judged, f"true_{head}")

    return {
        **unlearning_scores(
            acc(target, same),
            acc(retain, same),
            np.concatenate([acc(target, cross), acc(retain, cross)]),
        ),
        "n_target": len(target.objects),
        "n_retain": len(retain.objects),
    }


def prompt_following(judged: Judged) -> dict[str, float]:
    """How often the unerased model draws the object and the style it was asked for."""
    return {
        "object_accuracy": float((judged.objects == judged.true_objects).mean()),
        "style_accuracy": float((judged.styles == judged.true_styles).mean()),
        "n_images": len(judged.objects),
    }


def _concept_index(concept: str) -> tuple[str, int]:
    kind = concept_kind(concept)
    return kind, (OBJECTS if kind == "object" else STYLES).index(concept)


def extra_scores(
    judge: MiniCanvasJudge,
    concept: str,
    alias_seeds: Sequence[int],
    scene_seeds: Sequence[int],
    template: str = TEST_TEMPLATES[0],
    scene_template: str = SCENE_TEST_TEMPLATES[0],
    batch_size: int = 50,
    desc: str = "",
) -> dict[str, float]:
    """UA-alias and the in-scene scores of ``concept`` under whatever erasure is attached."""
    out: dict[str, float] = {}
    if alias_seeds:
        kind = concept_kind(concept)
        head = "objects" if kind == "object" else "styles"
        aliased = judge.run(
            alias_rows(concept, alias_seeds, template), batch_size=batch_size,
            desc=f"{desc} other name",
        )  # fmt: skip
        hit = getattr(aliased, head) == getattr(aliased, f"true_{head}")
        out.update(UA_alias=1.0 - float(hit.mean()), n_alias=len(hit))
    if scene_seeds:
        scenes = judge.run_scenes(
            scene_rows(concept, scene_seeds, scene_template), batch_size, f"{desc} scenes"
        )
        out.update(scene_scores(concept, scenes))
    return out


def evaluate(
    judge: MiniCanvasJudge,
    concept: str,
    variant: str,
    params: dict[str, Any],
    seeds: Sequence[int],
    retain_seeds: int,
    template: str = TEST_TEMPLATES[0],
    batch_size: int = 50,
    retain_every: int = 1,
    alias_seeds: Sequence[int] = (),
    scene_seeds: Sequence[int] = (),
    scene_template: str = SCENE_TEST_TEMPLATES[0],
) -> tuple[dict[str, float], Judged]:
    """Scores of ``concept`` erased by ``variant``; with ``alias_seeds`` or ``scene_seeds``,
    also UA-alias and the in-scene scores (:func:`extra_scores`)."""
    index = _concept_index(concept)
    target_rows = prompt_rows(template, seeds, only=index)
    retain_rows = diagonal_subset(
        prompt_rows(template, seeds[:retain_seeds], only=index, exclude=True), retain_every
    )
    negative = None
    if variant == "negative_prompt":
        negative = concept if index[0] == "object" else f"{concept} style"
    settings = {
        "saeuron": ("cond", "exact"),
        "saeuron_guidance_both": ("both", "exact"),
        "saeuron_paper_error": ("cond", "paper"),
    }
    ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if variant == "recipe":
        ctx = judge.erase_recipes([concept])
    elif variant == "saemnesia":
        ctx = judge.erase_supervised([concept], {concept: float(params["multiplier"])})
    elif variant in settings:
        half, error = settings[variant]
        ctx = judge.erase(
            concept, int(params["tau"]), float(params["multiplier"]), half, error,
            params.get("max_other_ratio"),
        )  # fmt: skip
    with ctx:
        target = judge.run(target_rows, negative, batch_size, desc=f"{concept}/{variant}")
        retain = judge.run(retain_rows, negative, batch_size, desc=f"{concept}/{variant} retain")
        extra = {}
        if negative is None:
            extra = extra_scores(
                judge, concept, alias_seeds, scene_seeds, template, scene_template,
                batch_size, f"{concept}/{variant}",
            )  # fmt: skip
    return {**scores(concept, target, retain), **extra}, target
