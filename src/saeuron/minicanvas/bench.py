"""The UnlearnCanvas protocol (method.md section 7) on MiniCanvas.

For each concept erased in turn, images of every (object, style) test prompt are judged by
the bundled classifier:

- style erased:  UA = 1 - style accuracy on the target style's prompts, IRA = style accuracy
  on the other styles' prompts, CRA = object accuracy on all of them;
- object erased: UA = 1 - object accuracy on the target object's prompts, IRA = object
  accuracy on the other objects' prompts, CRA = style accuracy on all of them.

Variants compared in the same run: no erasure, the concept as negative prompt, SAeUron with
the library defaults, SAeUron editing both CFG halves, and SAeUron with the published error
term. ``sweep`` tunes each concept's tau and multiplier on validation prompts and seeds.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, ConfigError, check_range, field
from ..grid import before_after_rows, save_grid
from ..io import atomic_path, atomic_write_json, read_json_or_empty
from .assets import (
    PARAMS_FILE,
    concept_hookpoint,
    concept_kind,
    load_params,
    select_features,
    write_features,
)
from .world import ANCHOR_TEMPLATES, OBJECTS, STYLES, TEST_SEEDS, TEST_TEMPLATES, VALIDATION_SEEDS

logger = logging.getLogger(__name__)

VARIANTS = (
    "none", "negative_prompt", "saeuron", "saeuron_cfg_both", "saeuron_paper_error", "saemnesia"
)
VARIANT_LABELS = {
    "none": "no erasure",
    "negative_prompt": "concept as negative prompt",
    "saeuron": "SAeUron (defaults: cond half, exact error)",
    "saeuron_cfg_both": "SAeUron, cfg_half=both",
    "saeuron_paper_error": "SAeUron, error_term=paper",
    "saemnesia": "SAEmnesia (supervised SAE, one latent per concept)",
}
SWEEP_FILE = "sweep.json"
# A regression guard for CI: concepts whose erasure met the quick test's bounds (UA up by at
# least 0.5, IRA and CRA at least 0.8) at its 10 steps and 2 seeds; the full benchmark in the
# README reports every concept, those the method does not yet erase well included.
QUICK_CONCEPTS = ("moon", "triangle", "checkered")


@dataclass
class BenchConfig(Config):
    out: str = field("minicanvas-bench", help="folder for results.json, results.md, grid.png")
    quick: bool = field(False, help="a CI-sized subset: 3 concepts, 2 variants, 2 seeds, 10 steps")
    concepts: list[str] | None = field(None, help="concepts to erase; default: all 20")
    variants: list[str] | None = field(None, help="rows of the table; default: all")
    seeds: list[int] | None = field(None, help="seeds of the target prompts; default: test seeds")
    retain_seeds: int = field(1, help="seeds per retained (non-target) prompt")
    num_inference_steps: int = field(20, help="DDIM steps (quick: at most 10)")
    guidance_scale: float = field(7.5, help="CFG scale")
    batch_size: int = field(50, help="images per pipeline call")
    model: str = field("minicanvas", help="the MiniCanvas pipeline")

    def __post_init__(self) -> None:
        if self.quick:
            self.concepts = self.concepts or list(QUICK_CONCEPTS)
            self.variants = self.variants or ["none", "saeuron"]
            self.num_inference_steps = min(self.num_inference_steps, 10)
            self.seeds = self.seeds or list(TEST_SEEDS[:2])
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        self.variants = self.variants or list(VARIANTS)
        if "none" not in self.variants:
            self.variants.insert(0, "none")
        self.seeds = self.seeds or list(TEST_SEEDS)
        for concept in self.concepts:
            concept_kind(concept)
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError("variants", f"got {variant!r}; allowed: {', '.join(VARIANTS)}")
        check_range("retain_seeds", self.retain_seeds, ge=1, le=len(self.seeds))
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("batch_size", self.batch_size, ge=1)


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

    def __init__(self, model: str = "minicanvas", steps: int = 20, guidance: float = 7.5):
        from ..pipelines import BUNDLED_MODELS, load_pipeline
        from ..sae import Sae
        from .classifier import MiniCanvasClassifier

        self.folder = BUNDLED_MODELS.get(model, Path(model))
        self.pipe = load_pipeline(model, device="cpu", dtype=torch.float32)
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
        return select_features(self.folder, concept, tau, self._stats, max_other_ratio)

    @contextlib.contextmanager
    def erasing(
        self,
        concept: str,
        tau: int,
        multiplier: float,
        cfg_half: str = "cond",
        error: str = "exact",
        max_other_ratio: float | None = None,
    ) -> Iterator[None]:
        from ..erase import erase

        hookpoint = concept_hookpoint(concept)
        with erase(
            self.pipe,
            self.saes[hookpoint],
            self.features(concept, tau, max_other_ratio),
            multiplier=multiplier,
            cfg_half=cfg_half,
            error_term=error,
            hookpoint=hookpoint,
        ):
            yield

    def supervised_sae(self, hookpoint: str) -> Any:
        from ..sae import Sae
        from .saemnesia import supervised_folder

        if hookpoint not in self._supervised:
            folder = supervised_folder(self.folder) / "saes"
            if not (folder / hookpoint).is_dir():
                raise FileNotFoundError(
                    f"no supervised SAE at {folder / hookpoint}: run `saeuron minicanvas "
                    "saemnesia build`"
                )
            self._supervised[hookpoint] = Sae.from_pretrained(folder, hookpoint=hookpoint)
        return self._supervised[hookpoint]

    @contextlib.contextmanager
    def erasing_supervised(self, concepts: Sequence[str], multipliers: dict[str, float]):
        """SAEmnesia: each concept is its one latent of the supervised SAE."""
        from ..erase import erase
        from ..features import ConceptFeatures
        from .saemnesia import features_path

        hookpoint = _one_hookpoint(concepts)
        features = [ConceptFeatures.load(features_path(self.folder, c)) for c in concepts]
        with erase(
            self.pipe, self.supervised_sae(hookpoint), features,
            multiplier={c: float(multipliers[c]) for c in concepts}, hookpoint=hookpoint,
        ):  # fmt: skip
            yield

    @contextlib.contextmanager
    def erasing_many(
        self, concepts: Sequence[str], params: dict[str, dict[str, Any]]
    ) -> Iterator[None]:
        """Several concepts of one kind at once, each with its tuned tau, gamma and filter."""
        from ..erase import erase

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
            hookpoint=hookpoint,
        ):  # fmt: skip
            yield

    def run(
        self,
        rows: Sequence[tuple[str, int, int, int]],
        negative: str | None = None,
        batch_size: int = 50,
        desc: str = "images",
    ) -> Judged:
        """``rows``: (prompt, object, style, seed). Images are sampled in batches."""
        images: list[Any] = []
        for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch", leave=False):
            chunk = rows[start : start + batch_size]
            generators = [torch.Generator().manual_seed(seed) for _, _, _, seed in chunk]
            images += self.pipe(
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
    baseline: Judged, seeds_of: np.ndarray, concept: str, seeds: Sequence[int], retain_seeds: int
) -> tuple[Judged, Judged]:
    """Target and retain images of ``concept`` out of one unerased run over every pair."""
    kind, index = _concept_index(concept)
    hit = (baseline.true_objects if kind == "object" else baseline.true_styles) == index
    target = hit & np.isin(seeds_of, list(seeds))
    retain = ~hit & np.isin(seeds_of, list(seeds[:retain_seeds]))
    return subset(baseline, target), subset(baseline, retain)


def scores(concept: str, target: Judged, retain: Judged) -> dict[str, float]:
    kind = concept_kind(concept)
    same = "objects" if kind == "object" else "styles"
    cross = "styles" if kind == "object" else "objects"

    def acc(judged: Judged, head: str) -> np.ndarray:
        return getattr(judged, head) == getattr(judged, f"true_{head}")

    return {
        "UA": float(1 - acc(target, same).mean()),
        "IRA": float(acc(retain, same).mean()),
        "CRA": float(np.concatenate([acc(target, cross), acc(retain, cross)]).mean()),
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
) -> tuple[dict[str, float], Judged]:
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
        "saeuron_cfg_both": ("both", "exact"),
        "saeuron_paper_error": ("cond", "paper"),
    }
    ctx: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if variant == "saemnesia":
        ctx = judge.erasing_supervised([concept], {concept: float(params["multiplier"])})
    elif variant in settings:
        half, error = settings[variant]
        ctx = judge.erasing(
            concept, int(params["tau"]), float(params["multiplier"]), half, error,
            params.get("max_other_ratio"),
        )  # fmt: skip
    with ctx:
        target = judge.run(target_rows, negative, batch_size, desc=f"{concept}/{variant}")
        retain = judge.run(retain_rows, negative, batch_size, desc=f"{concept}/{variant} retain")
    return scores(concept, target, retain), target


def _table(results: dict[str, dict[str, dict[str, float]]], variants: Sequence[str]) -> str:
    lines = [
        "| variant | style UA | style IRA | style CRA | object UA | object IRA | object CRA |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        cells = []
        for kind in ("style", "object"):
            rows = [
                r[variant] for c, r in results.items() if concept_kind(c) == kind and variant in r
            ]
            for metric in ("UA", "IRA", "CRA"):
                cells.append(f"{np.mean([r[metric] for r in rows]):.3f}" if rows else "-")
        lines.append(f"| {VARIANT_LABELS[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    start = time.perf_counter()
    judge = MiniCanvasJudge(cfg.model, cfg.num_inference_steps, cfg.guidance_scale)
    params = load_params(judge.folder)
    supervised = {}
    if "saemnesia" in cfg.variants:
        from .saemnesia import load_supervised_params

        supervised = load_supervised_params(judge.folder)
    results: dict[str, dict[str, dict[str, float]]] = {}
    examples = []
    # Unerased images do not depend on the concept: sample every pair once and share them.
    all_rows = prompt_rows(TEST_TEMPLATES[0], cfg.seeds)
    baseline = judge.run(all_rows, batch_size=cfg.batch_size, desc="no erasure")
    baseline_seeds = np.array([row[3] for row in all_rows])
    following = prompt_following(baseline)
    logger.info("prompt following: %s", following)
    for concept in tqdm(cfg.concepts, desc="concepts", unit="concept"):
        results[concept] = {}
        before: Judged | None = None
        after: Judged | None = None
        for variant in cfg.variants:
            if variant == "none":
                target, retain = split_baseline(
                    baseline, baseline_seeds, concept, cfg.seeds, cfg.retain_seeds
                )
                score = scores(concept, target, retain)
            else:
                chosen = supervised[concept] if variant == "saemnesia" else params[concept]
                score, target = evaluate(
                    judge, concept, variant, chosen, cfg.seeds, cfg.retain_seeds,
                    batch_size=cfg.batch_size,
                )  # fmt: skip
            results[concept][variant] = score
            logger.info("%s / %s: %s", concept, variant, score)
            if variant == "none":
                before = target
            if variant == "saeuron":
                after = target
        if before is not None and after is not None and len(examples) < 8:
            step = max(1, len(before.images) // 8)
            examples.append((concept, before.images[::step][:8], after.images[::step][:8]))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": cfg.to_dict(),
        "prompt_following": following,
        "params": {c: params[c] for c in cfg.concepts},
        "saemnesia_params": {c: supervised[c] for c in cfg.concepts if c in supervised},
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "results.json", report)
    table = (
        f"Prompt following without erasure ({following['n_images']} images): object accuracy "
        f"{following['object_accuracy']:.3f}, style accuracy {following['style_accuracy']:.3f}\n\n"
        + _table(results, cfg.variants)
    )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    if examples:
        rows = before_after_rows(examples, ("before", "erased"))
        save_grid(rows, out / "grid.png", label_width=80)
    report["table"] = table
    return report


# -- tuning -------------------------------------------------------------------------------


@dataclass
class SweepConfig(Config):
    taus: list[int] = field([1, 2, 3], help="latents per step to try")
    multipliers: list[float] = field([-1.0, -5.0, -10.0, -20.0, -30.0], help="gammas to try")
    max_other_ratio: float | None = field(
        None, help="specificity filter of the features tried (see select_contrastive)"
    )
    concepts: list[str] | None = field(None, help="concepts to tune; default: all 20")
    num_inference_steps: int = field(20, help="DDIM steps")
    guidance_scale: float = field(7.5, help="CFG scale")
    batch_size: int = field(50, help="images per pipeline call")
    retain_every: int = field(
        2, help="judge retention on every N-th retained prompt (the sweep runs many trials)"
    )
    model: str = field("minicanvas", help="the MiniCanvas pipeline")
    write: bool = field(True, help="write params.json and the features of the winners")

    def __post_init__(self) -> None:
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        for concept in self.concepts:
            concept_kind(concept)
        if not self.taus or not self.multipliers:
            raise ConfigError("taus", "the grid needs at least one tau and one multiplier")
        check_range("retain_every", self.retain_every, ge=1)
        if self.max_other_ratio is not None:
            check_range("max_other_ratio", self.max_other_ratio, gt=0)


def sweep_objective(trial: dict[str, Any]) -> float:
    """What a sweep maximises: the mean of UA, IRA and CRA, the three numbers with targets."""
    return (trial["UA"] + trial["IRA"] + trial["CRA"]) / 3


def _trial_key(trial: dict[str, Any]) -> tuple[int, float, float | None]:
    return int(trial["tau"]), float(trial["multiplier"]), trial.get("max_other_ratio")


def merge_trials(
    recorded: dict[str, Any] | None, new: list[dict[str, Any]], retain_every: int
) -> list[dict[str, Any]]:
    """A concept's trials so far plus ``new`` ones; a new trial replaces an equal setting.

    Earlier trials count only when they were judged the same way (same ``retain_every``):
    validation prompts and seeds are fixed, so such a trial is what rerunning it would give.
    """
    merged: dict[tuple[int, float, float | None], dict[str, Any]] = {}
    if recorded and recorded.get("retain_every") == retain_every:
        for trial in recorded.get("trials", []):
            merged[_trial_key(trial)] = trial
    for trial in new:
        merged[_trial_key(trial)] = trial
    return list(merged.values())


def best_params(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The winning setting; ties go to the earlier trial."""
    best = max(trials, key=sweep_objective)
    chosen: dict[str, Any] = {"tau": int(best["tau"]), "multiplier": float(best["multiplier"])}
    if best.get("max_other_ratio") is not None:
        chosen["max_other_ratio"] = float(best["max_other_ratio"])
    return chosen


def run_sweep(cfg: SweepConfig) -> dict[str, Any]:
    """Best mean of UA, IRA, CRA per concept on validation phrasing and seeds (never test ones).

    Trials add to ``sweep.json``: a later sweep over another grid (e.g. with a specificity
    filter) competes with every trial recorded before under the same protocol.
    """
    judge = MiniCanvasJudge(cfg.model, cfg.num_inference_steps, cfg.guidance_scale)
    template = ANCHOR_TEMPLATES[1]
    seeds = list(VALIDATION_SEEDS)
    record = read_json_or_empty(judge.folder / SWEEP_FILE)
    chosen: dict[str, Any] = {}
    trials: dict[str, list[dict[str, Any]]] = {}
    for concept in tqdm(cfg.concepts, desc="sweep", unit="concept"):
        new = []
        for tau, gamma in itertools.product(cfg.taus, cfg.multipliers):
            setting = {"tau": tau, "multiplier": gamma, "max_other_ratio": cfg.max_other_ratio}
            score, _ = evaluate(
                judge, concept, "saeuron", setting, seeds, 1,
                template=template, batch_size=cfg.batch_size, retain_every=cfg.retain_every,
            )  # fmt: skip
            new.append({**setting, **score})
        trials[concept] = merge_trials(record.get(concept), new, cfg.retain_every)
        chosen[concept] = best_params(trials[concept])
        logger.info("%s: best %s", concept, chosen[concept])
    if cfg.write:
        params = load_params(judge.folder)
        params.update(chosen)
        atomic_write_json(judge.folder / PARAMS_FILE, params)
        # The trials behind params.json, per concept, so a reader can see how each winner was
        # chosen; sweeps over other concepts or grids add to the file.
        for concept in chosen:
            grids = list(record.get(concept, {}).get("grids", []))
            if "grid" in record.get(concept, {}):
                grids.append(record[concept]["grid"])
            grids.append(
                {"taus": cfg.taus, "multipliers": cfg.multipliers,
                 "max_other_ratio": cfg.max_other_ratio}
            )  # fmt: skip
            record[concept] = {
                "grids": grids,
                "retain_every": cfg.retain_every,
                "objective": "mean of UA, IRA, CRA",
                "chosen": chosen[concept],
                "trials": trials[concept],
            }
        atomic_write_json(judge.folder / SWEEP_FILE, record)
        write_features(judge.folder, params)
    return {"chosen": chosen, "trials": trials, "n_trials": len(cfg.taus) * len(cfg.multipliers)}
