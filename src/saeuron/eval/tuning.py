"""``saeuron tune``: search an erasure recipe on validation prompts, for any model.

Each trial is one setting: the sites (one or more SAEs, among those given), the rule
(``ablate``, ``anchor``, ``scale``, ``project``), a strength for text-encoder sites and one for
denoiser sites, the latents per step (tau), the specificity filter, the anchor concept, a
window of the schedule and the CFG rows. The setting becomes a recipe (features selected
from per-concept statistics at each site, :func:`~saeuron.erasure.concepts.select.
select_contrastive`), the recipe erases the prompt set's target and retained prompts, and a
judge tells what each image shows: UA, IRA and CRA. The objective is minus the weighted
shortfall below the targets (plus a thousandth of their mean, to break ties), so a setting
that trades retention for forgetting loses as much as one that does the reverse.

The search is Optuna's TPE sampler. The study lives in SQLite beside the recipe by default:
a killed run resumes where it stopped (trials of a dead worker are retried, found by their
missed heartbeat), and several workers may share one study (``--storage`` on a shared
database is the supported way to run them in parallel). Optuna is the ``[tune]`` extra,
imported when a tuning starts.

Outputs, beside ``--out NAME.json``: ``NAME.trials.csv`` (every trial with its setting, image
count and scores), ``NAME.tradeoff.png`` (UA against retention, the chosen trial marked),
and ``features/`` with the chosen setting's features.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saeuron.erasure.recipe import (
    Recipe,
)
from saeuron.erasure.recipe_erasure import RecipeAssets, RecipeErasure
from saeuron.eval.attacks.budgets import ATTACK_BUDGETS
from saeuron.eval.attacks.unlearndiffatk import UnlearnDiffSettings, unlearn_diff_atk
from saeuron.eval.judges import Judge, degenerate
from saeuron.eval.prompt_sets import PromptRow, PromptSet
from saeuron.eval.tune_config import ATTACKED, DEFAULT_WEIGHTS, TuneConfig
from saeuron.eval.tuning_inputs import TuneInputs, resolve_inputs
from saeuron.eval.tuning_report import plot_tradeoff, site_words, write_recipe, write_trials
from saeuron.eval.tuning_space import RecipeMaker, enqueued_params, grid_settings, suggest_setting
from saeuron.models.sampling import seed_generators
from saeuron.models.sites import renamed_settings
from saeuron.utils.atomic import disk_full_names
from saeuron.utils.config import ConfigError

logger = logging.getLogger(__name__)

DEGENERATE_OBJECTIVE = -10.0
"""A trial whose images are blank or non-finite: worse than any real score."""


def score_images(
    judge: Judge,
    prompt_set: PromptSet,
    concept: str,
    target: Sequence[tuple[PromptRow, Any]],
    retain: Sequence[tuple[PromptRow, Any]],
) -> dict[str, float]:
    """UA (target images not showing the concept), IRA (retained images showing their own
    member of the concept's kind), CRA (every image showing its members of the other kinds);
    NaN where a score has no image. Blank or non-finite images count as wrong everywhere."""
    kind = prompt_set.kind_of(concept)
    rows = [*target, *retain]
    bad = [degenerate(image) for _, image in rows]
    answers = {
        k: judge.classify([image for _, image in rows], k, prompt_set.kinds[k])
        for k in prompt_set.kinds
    }
    n_target = len(target)
    same = answers[kind]
    ua = [not b and same[i] != concept for i, b in enumerate(bad[:n_target])]
    ira = [not bad[i] and same[i] == rows[i][0].labels[kind] for i in range(n_target, len(rows))]
    cra = [
        not bad[i] and answers[k][i] == rows[i][0].labels[k]
        for k in prompt_set.kinds if k != kind for i in range(len(rows))
    ]  # fmt: skip

    def mean(values: list[bool]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {"UA": mean(ua), "IRA": mean(ira), "CRA": mean(cra), "n_images": len(rows),
            "degenerate": int(sum(bad))}  # fmt: skip


def objective_value(
    scores: dict[str, float], targets: dict[str, float], weights: dict[str, float],
    attack_target: float | None = None,
) -> float:  # fmt: skip
    """Minus the weighted shortfall below the targets, plus a thousandth of the mean score;
    scores that are NaN (no such images) do not count. With ``attack_target``, UA after the
    attack (``UA_attacked``; 0 for a trial not attacked) falls short of it too."""
    if scores.get("degenerate"):
        return DEGENERATE_OBJECTIVE
    present = [m for m in ("UA", "IRA", "CRA") if not math.isnan(scores[m])]
    short = sum(weights[m] * max(0.0, targets[m] - scores[m]) for m in present)
    if attack_target is not None:
        short += max(0.0, attack_target - float(scores.get(ATTACKED, 0.0)))
    return -short + 1e-3 * float(np.mean([scores[m] for m in present]))


# -- sampling a trial ----------------------------------------------------------------------


def sample_rows(
    pipe: Any, rows: Sequence[PromptRow], steps: int, guidance: float, batch_size: int,
    bar: Any = None,
) -> list[Any]:  # fmt: skip
    images: list[Any] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        images += pipe(
            [r.prompt for r in chunk], num_inference_steps=steps, guidance_scale=guidance,
            generator=seed_generators([r.seed for r in chunk]),
        ).images  # fmt: skip
        if bar is not None:
            bar.update(len(chunk))
    return images


def evaluate_recipe(
    inputs: TuneInputs, recipe: Recipe, concept: str, batch_size: int,
    templates: list[str] | None = None, assets: RecipeAssets | None = None,
) -> dict[str, float]:  # fmt: skip
    """The recipe's UA, IRA and CRA on the prompt set (``templates``: other phrasings)."""
    target, retain = inputs.prompt_set.rows(concept, templates)
    rows = [*target, *retain]
    with tqdm(total=len(rows), desc=f"{concept} images", unit="image", leave=False) as bar:
        with RecipeErasure(inputs.pipe, recipe, [concept], assets=assets):
            images = sample_rows(inputs.pipe, rows, inputs.steps, inputs.guidance, batch_size, bar)
    pairs = list(zip(rows, images))
    return score_images(inputs.judge, inputs.prompt_set, concept, pairs[: len(target)],
                        pairs[len(target):])  # fmt: skip


# -- the attack ------------------------------------------------------------------------------


class RecipeTechnique:
    """A trial's recipe as the attacks see a technique: ``pipe``, ``erase()``,
    ``generate(prompts, seeds)`` and ``unerased(prompts, seeds)``."""

    def __init__(self, inputs: TuneInputs, recipe: Recipe, concept: str, batch_size: int,
                 assets: RecipeAssets) -> None:  # fmt: skip
        self.inputs, self.recipe, self.concept = inputs, recipe, concept
        self.pipe, self.batch_size, self.assets = inputs.pipe, batch_size, assets

    def erase(self) -> RecipeErasure:
        return RecipeErasure(self.pipe, self.recipe, [self.concept], assets=self.assets)

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        rows = [PromptRow(p, {}, s) for p, s in zip(prompts, seeds)]
        return sample_rows(self.pipe, rows, self.inputs.steps, self.inputs.guidance,
                           self.batch_size)  # fmt: skip

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        with self.erase():
            return self.unerased(prompts, seeds)


AttackSearch = Any
"""``(technique, prompts, seed, forbidden_words, flagged) -> [{"prompt": ...}, ...]``."""


def quick_unlearndiffatk(budget: str = "quick") -> AttackSearch:
    settings = UnlearnDiffSettings(**ATTACK_BUDGETS["unlearndiffatk"].settings(budget))

    def search(technique: Any, prompts: list[str], seed: int, forbidden: list[str],
               flagged: Any) -> list[dict[str, Any]]:  # fmt: skip
        return unlearn_diff_atk(technique, prompts, settings, seed, forbidden, flagged)

    return search


def attacked_ua(
    inputs: TuneInputs, technique: RecipeTechnique, concept: str, prompts: list[str], seed: int,
    search: AttackSearch,
) -> float:  # fmt: skip
    """UA after ``search`` attacks ``prompts`` (prompt ``i`` drawn with seed ``seed + i``),
    judged as the trial is."""
    kind = inputs.prompt_set.kind_of(concept)
    members = inputs.prompt_set.kinds[kind]

    def flagged(images: list[Any]) -> list[bool]:
        return [a == concept for a in inputs.judge.classify(images, kind, members)]

    found = search(technique, prompts, seed, concept.split(), flagged)
    after = technique.generate([f["prompt"] for f in found], [seed + i for i in range(len(found))])
    return 1.0 - float(np.mean(flagged(after))) if after else 0.0


# -- the study -----------------------------------------------------------------------------


def _optuna() -> Any:
    try:
        import optuna  # noqa: PLC0415 - the [tune] extra, imported when a tuning starts
    except ImportError:
        raise ConfigError("tune", "needs Optuna: pip install 'saeuron[tune]'") from None
    # The heartbeat that lets a killed run resume is marked experimental; said once per run,
    # it tells a user nothing they can act on.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _stale_trial_retry(optuna: Any) -> dict[str, Any]:
    """The RDBStorage argument that retries a trial whose worker died: renamed in Optuna 4.9
    (the old name warns there and goes in 6.0)."""
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
        return {"heartbeat_stale_trial_callback": retry}
    return {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=2)}


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.with_suffix('.optuna.db').resolve()}"


def run_tune(
    cfg: TuneConfig, pipe: Any = None, judge: Judge | None = None,
    attack_search: AttackSearch | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run (or resume) the study until it holds ``cfg.trials`` complete trials; write the
    best setting's recipe, the trials table and the trade-off plot. Returns a summary.

    With ``cfg.attack_prompts``, each trial that meets the targets is attacked
    (``attack_search``, default UnlearnDiffAtk at ``cfg.attack_budget``)."""
    optuna = _optuna()
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inputs = resolve_inputs(cfg, pipe, judge)
    weights = {**DEFAULT_WEIGHTS, **cfg.weights}
    work = (out.parent / f".{out.stem}.features").resolve()
    maker = RecipeMaker(inputs, cfg.concept, work)
    study, wanted, where = _open_study(optuna, cfg, inputs, out, weights)
    cache: dict[str, RecipeAssets] = {}
    evaluate = _trial_objective(cfg, inputs, maker, weights, attack_search, cache)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    remaining = max(0, wanted - len(done))
    started = time.perf_counter()
    if remaining:
        bar = tqdm(total=remaining, desc=f"tune {cfg.concept}", unit="trial")
        with disk_full_names(where), bar:
            study.optimize(evaluate, n_trials=remaining, callbacks=[lambda *_: bar.update(1)],
                           gc_after_trial=False)  # fmt: skip
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    recipe, scores = _best_recipe(cfg, inputs, maker, best, cache.get("assets"))
    recipe.tuning = _tuning_record(cfg, inputs, study.study_name, complete, best, weights, out)
    write_recipe(recipe, out, work)
    # The selection cache is remade on a resume; only what the recipe names stays.
    shutil.rmtree(work, ignore_errors=True)
    write_trials(complete, out.with_suffix(".trials.csv"))
    plot_tradeoff(complete, best.number, out.with_suffix(".tradeoff.png"), cfg.concept)
    return {"recipe": str(out), "best": renamed_settings(best.user_attrs["setting"]),
            "scores": scores, "objective": best.value, "trials": len(complete), "ran": remaining,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def _open_study(
    optuna: Any, cfg: TuneConfig, inputs: TuneInputs, out: Path, weights: dict[str, float]
) -> tuple[Any, int, str]:
    """The study (created, or loaded to resume), how many complete trials it should hold,
    and its name for a full-disk error. A new study gets the enqueued settings (and a
    grid's) as its first trials."""
    storage_url = cfg.storage or default_storage(out)
    storage = (
        optuna.storages.RDBStorage(storage_url, heartbeat_interval=60, grace_period=180,
                                   **_stale_trial_retry(optuna))
        if storage_url.startswith(("sqlite", "postgresql", "mysql")) else storage_url
    )  # fmt: skip
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=8, constant_liar=True)
    # SQLite commits whole transactions: a full disk loses at most the running trial, which
    # the heartbeat hands back for a retry when the study is resumed.
    where = f"the tuning study {storage_url}"
    with disk_full_names(where):
        study = optuna.create_study(
            study_name=cfg.study or out.stem, storage=storage, sampler=sampler,
            direction="maximize", load_if_exists=True,
        )  # fmt: skip
        study.set_user_attr("concept", cfg.concept)
        study.set_user_attr("targets", inputs.targets)
        study.set_user_attr("weights", weights)
        grid = grid_settings(cfg, inputs, cfg.concept) if cfg.sampler == "grid" else []
        queue = {json.dumps(enqueued_params(s), sort_keys=True): s for s in cfg.enqueued() + grid}
        if not study.trials:
            for setting in queue.values():
                study.enqueue_trial(enqueued_params(setting), skip_if_exists=True)
    # A grid runs each of its settings once, whatever --trials says.
    return study, len(queue) if grid else cfg.trials, where


def _trial_objective(
    cfg: TuneConfig, inputs: TuneInputs, maker: RecipeMaker, weights: dict[str, float],
    attack_search: AttackSearch | None, cache: dict[str, RecipeAssets],
) -> Callable[[Any], float]:  # fmt: skip
    """One trial: its setting's recipe erases the validation prompts, the judge scores them
    (and an attack, for a trial that meets the targets), and the objective is returned."""
    targets = inputs.targets

    def evaluate(trial: Any) -> float:
        start = time.perf_counter()
        setting = suggest_setting(trial, cfg, inputs, cfg.concept)
        recipe = maker.recipe(setting)
        # Trial recipes name absolute paths: one cache of SAEs and features serves them all.
        if "assets" not in cache:
            cache["assets"] = RecipeAssets(recipe)
        assets = cache["assets"]
        scores = evaluate_recipe(inputs, recipe, cfg.concept, cfg.batch_size, assets=assets)
        attack_target = cfg.attack_target if cfg.attack_prompts else None
        # Only a trial that meets the other targets is worth an attack (minutes each).
        if attack_target is not None and objective_value(scores, targets, weights) >= 0:
            target_rows, _ = inputs.prompt_set.rows(cfg.concept)
            seed = inputs.prompt_set.seeds[0]
            prompts = [r.prompt for r in target_rows if r.seed == seed][: cfg.attack_prompts]
            technique = RecipeTechnique(inputs, recipe, cfg.concept, cfg.batch_size, assets)
            search = attack_search or quick_unlearndiffatk(cfg.attack_budget)
            scores[ATTACKED] = attacked_ua(inputs, technique, cfg.concept, prompts, seed, search)
        value = objective_value(scores, targets, weights, attack_target)
        trial.set_user_attr("setting", setting)
        trial.set_user_attr("scores", scores)
        trial.set_user_attr("seconds", round(time.perf_counter() - start, 2))
        logger.info("trial %d %s: %s -> %.4f", trial.number, setting, scores, value)
        return value

    return evaluate


def _best_recipe(
    cfg: TuneConfig, inputs: TuneInputs, maker: RecipeMaker, best: Any,
    assets: RecipeAssets | None,
) -> tuple[Recipe, dict[str, float]]:  # fmt: skip
    """The best trial's recipe, with its validation scores (and held-out ones) and a
    description of where it edits."""
    setting = renamed_settings(best.user_attrs["setting"])
    scores = dict(best.user_attrs["scores"])
    if cfg.heldout and inputs.prompt_set.heldout_templates:
        held = evaluate_recipe(
            inputs, maker.recipe(setting), cfg.concept, cfg.batch_size,
            inputs.prompt_set.heldout_templates, assets,
        )  # fmt: skip
        scores.update({f"heldout_{k}": v for k, v in held.items() if k in ("UA", "IRA", "CRA")})
    kept = {k: v for k, v in scores.items()
            if k in ("UA", "IRA", "CRA", ATTACKED) or "heldout_" in k}  # fmt: skip
    recipe = maker.recipe(setting, kept)
    recipe.description = (
        f"Erases {cfg.concept!r} from {inputs.model} by editing SAE features at "
        + ", ".join(site_words(e) for e in recipe.concepts[cfg.concept].edits)
        + "; made by saeuron tune on validation prompts."
    )
    return recipe, scores


def _tuning_record(
    cfg: TuneConfig, inputs: TuneInputs, study_name: str, complete: Sequence[Any], best: Any,
    weights: dict[str, float], out: Path,
) -> dict[str, Any]:  # fmt: skip
    """The recipe's ``tuning`` block: how it was found, on what, by which objective."""
    record: dict[str, Any] = {
        "tuner": "saeuron tune (grid)" if cfg.sampler == "grid" else "saeuron tune (Optuna TPE)",
        "study": study_name,
        "trials": len(complete), "best_trial": best.number, "objective": best.value,
        "targets": inputs.targets, "weights": weights, "prompt_set": inputs.prompt_set.name,
        "images_per_trial": int(best.user_attrs["scores"].get("n_images", 0)),
        "trials_table": out.with_suffix(".trials.csv").name,
        "objective_formula": "-sum(weight * max(0, target - score)) + 0.001 * mean(scores)"
        + (" - max(0, attack_target - UA_attacked)" if cfg.attack_prompts else ""),
    }  # fmt: skip
    if cfg.enqueue:
        # Where the search started (a known setting), so the record says so.
        record["enqueued"] = cfg.enqueued()
    if cfg.attack_prompts:
        record["attack"] = {
            "search": "unlearndiffatk", "budget": cfg.attack_budget,
            "prompts": cfg.attack_prompts, "target": cfg.attack_target,
        }  # fmt: skip
    return record
