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

import csv
import itertools
import json
import logging
import math
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.features import SAE_FINGERPRINT
from saeuron.erasure.recipe import (
    AnchorRef,
    BaseModelRef,
    ConceptRecipe,
    Edit,
    FeaturesRef,
    Recipe,
    SaeRef,
    SamplingRef,
    copy_features,
    file_sha256,
)
from saeuron.erasure.recipe_erasure import RecipeAssets, RecipeErasure, pipeline_fingerprint
from saeuron.eval.attacks.budgets import ATTACK_BUDGETS
from saeuron.eval.attacks.unlearndiffatk import UnlearnDiffSettings, unlearn_diff_atk
from saeuron.eval.judges import Judge, degenerate, make_judge
from saeuron.eval.prompt_sets import PromptRow, PromptSet
from saeuron.eval.tune_config import DEFAULT_TARGETS, DEFAULT_WEIGHTS, TuneConfig
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.resolve import ResolvedModel
from saeuron.models.sampling import seed_generators
from saeuron.sae import Sae
from saeuron.sae.formats import hookpoints_in
from saeuron.utils.atomic import disk_full_names
from saeuron.utils.config import ConfigError
from saeuron.utils.io import atomic_path, read_json_or_empty

logger = logging.getLogger(__name__)

TUNE_FILE = "tune.json"
"""A bundle's tuning defaults: prompt set, judge, SAEs, statistics, site sets, targets."""
SITE_JOIN = "+"
STRENGTH_RANGES = {
    # (text-encoder sites, denoiser sites): where each rule's useful strengths lie.
    "ablate": ((-1.5, 0.5), (-30.0, 0.0)),
    "anchor": ((-1.5, 0.5), (-30.0, 0.0)),
    "project": ((-1.5, 0.5), (-10.0, 0.0)),
    "scale": ((-100.0, -0.5), (-100.0, -0.5)),
}
ATTACKED = "UA_attacked"
"""A trial's score for UA after the attack (``--attack-prompts``)."""
DEGENERATE_OBJECTIVE = -10.0
"""A trial whose images are blank or non-finite: worse than any real score."""


# -- what the tuner works with -------------------------------------------------------------


@dataclass
class TuneInputs:
    """Everything a study needs, resolved once: the model, SAEs, statistics, prompts, judge."""

    model: str
    pipe: Any
    prompt_set: PromptSet
    judge: Judge
    saes: Path
    stats: Path
    site_sets: list[str]
    targets: dict[str, float]
    steps: int
    guidance: float


def bundle_tuning(model: ResolvedModel) -> tuple[Path | None, dict[str, Any]]:
    """A bundled model's folder and tuning defaults (none for any other model)."""
    bundle = model.bundle
    if bundle is None:
        return None, {}
    return bundle.folder, read_json_or_empty(bundle.folder / TUNE_FILE)


def resolve_inputs(cfg: TuneConfig, pipe: Any = None, judge: Judge | None = None) -> TuneInputs:
    """The study's inputs from ``cfg`` and the bundle's tuning defaults; refused up front
    when a piece is missing or the prompts hold test-only seeds, phrasings or names.

    Without statistics (no ``--stats``, no bundle's), they are collected here from the prompt
    set, for every concept of the erased one's kind at every site, into a folder beside the
    recipe (kept: a resumed study reads them again)."""
    folder, defaults = bundle_tuning(cfg.resolved_model)

    def pick(value: str | None, key: str) -> str | None:
        if value is not None:
            return value
        if folder is not None and defaults.get(key):
            return str(folder / defaults[key]) if key != "judge" else str(defaults[key])
        return None

    missing = [name for name, value in (
        ("prompt_set", pick(cfg.prompt_set, "prompt_set")), ("judge", pick(cfg.judge, "judge")),
        ("saes", pick(cfg.saes, "saes")),
    ) if value is None]  # fmt: skip
    if missing:
        raise ConfigError(
            missing[0], f"{cfg.model!r} has no tuning defaults for {', '.join(missing)}; "
            "name " + " and ".join(f"--{m.replace('_', '-')}" for m in missing)
        )  # fmt: skip
    prompt_set = PromptSet.load(str(pick(cfg.prompt_set, "prompt_set")))
    prompt_set.check_tunable([cfg.concept])
    kind = prompt_set.kind_of(cfg.concept)
    saes = Path(str(pick(cfg.saes, "saes")))
    if not saes.is_dir():
        raise ConfigError("saes", f"no folder {saes}")
    given_stats = pick(cfg.stats, "stats")
    out = Path(cfg.out)
    stats = Path(given_stats) if given_stats else out.parent / f".{out.stem}.stats"
    site_sets = cfg.site_sets or defaults.get("site_sets", {}).get(kind) or (
        [h.name for h in sorted(stats.iterdir())
         if (stats / h.name / f"{cfg.concept}.json").is_file() and (saes / h.name).is_dir()]
        if given_stats else hookpoints_in(saes)
    )  # fmt: skip
    if not site_sets:
        raise ConfigError("site_sets", f"no site has both an SAE in {saes} and statistics "
                                       f"of {cfg.concept!r} in {stats}")  # fmt: skip
    hookpoints = sorted({h for s in site_sets for h in s.split(SITE_JOIN)})
    for hookpoint in hookpoints:
        if not (saes / hookpoint).is_dir():
            raise ConfigError("site_sets", f"no SAE at {saes / hookpoint}")
    absent = [(h, n) for h in hookpoints for n in prompt_set.kinds[kind]
              if not (stats / h / f"{n}.json").is_file()]  # fmt: skip
    if absent and given_stats:
        h, n = absent[0]
        raise ConfigError(
            "stats", f"no statistics of {n!r} at {stats / h}; the contrast needs every concept "
            "of the kind (leave --stats out to have them collected)"
        )  # fmt: skip
    targets = {**DEFAULT_TARGETS, **defaults.get("targets", {}).get(kind, {}), **cfg.targets}
    steps = cfg.num_inference_steps or int(defaults.get("num_inference_steps", 0)) or 20
    guidance = cfg.guidance_scale if cfg.guidance_scale is not None else float(
        defaults.get("guidance_scale", 7.5)
    )  # fmt: skip
    if judge is None:
        spec = str(pick(cfg.judge, "judge"))
        options = {"folder": folder} if spec == "minicanvas" else {}
        judge = make_judge(spec, **{**options, **cfg.judge_options})
    if pipe is None:
        pipe = load_pipeline(cfg.resolved_model, device=cfg.device)
    if absent:
        collect_missing_stats(pipe, saes, stats, prompt_set, absent, steps, guidance)
    return TuneInputs(cfg.model, pipe, prompt_set, judge, saes, stats, list(site_sets),
                      targets, steps, guidance)  # fmt: skip


def collect_missing_stats(
    pipe: Any, saes: Path, stats: Path, prompt_set: PromptSet,
    absent: Sequence[tuple[str, str]], steps: int, guidance: float,
) -> None:  # fmt: skip
    """Each (hookpoint, concept)'s statistics from the prompt set's prompts of the concept
    (every template, every member of the other kinds), written where tuning reads them."""
    logger.info("collecting the statistics of %d (site, concept) pairs at %s", len(absent), stats)
    loaded: dict[str, Sae] = {}
    for hookpoint, concept in tqdm(absent, desc="statistics", unit="concept"):
        if hookpoint not in loaded:
            loaded[hookpoint] = Sae.from_pretrained(saes, hookpoint=hookpoint)
        sae = loaded[hookpoint]
        target, _ = prompt_set.rows(concept)
        prompts = list(dict.fromkeys(r.prompt for r in target))
        collected = collect_stats(
            pipe, sae, prompts, concept=concept, hookpoint=hookpoint, num_inference_steps=steps,
            guidance_scale=guidance, activation_site=sae.meta.get("activation_site", "output"),
            progress=False,
        )  # fmt: skip
        collected.save(stats / hookpoint / concept)


# -- scoring ----------------------------------------------------------------------------


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


# -- settings and recipes ---------------------------------------------------------------------


class RecipeMaker:
    """Turns a trial's setting into a recipe, selecting (and caching) features per site."""

    def __init__(self, inputs: TuneInputs, concept: str, features_dir: Path):
        self.inputs = inputs
        self.concept = concept
        self.kind = inputs.prompt_set.kind_of(concept)
        self.features_dir = features_dir
        self._stats: dict[tuple[str, str], ConceptStats] = {}
        self._saes: dict[str, Sae] = {}

    def sae(self, hookpoint: str) -> Sae:
        if hookpoint not in self._saes:
            self._saes[hookpoint] = Sae.from_pretrained(self.inputs.saes, hookpoint=hookpoint)
        return self._saes[hookpoint]

    def stats(self, hookpoint: str, concept: str) -> ConceptStats:
        key = (hookpoint, concept)
        if key not in self._stats:
            self._stats[key] = ConceptStats.load(self.inputs.stats / hookpoint / concept)
        return self._stats[key]

    def features_ref(
        self, concept: str, hookpoint: str, tau: int, ratio: float | None
    ) -> FeaturesRef:
        """``concept``'s latents against the rest of its kind at ``hookpoint`` (written once)."""
        tag = f"t{tau}-r{'none' if ratio is None else round(ratio * 100)}"
        relative = f"{hookpoint}/{concept}-{tag}"
        path = self.features_dir / relative
        selection = {"method": "contrastive", "tau": tau, "max_other_ratio": ratio,
                     "contrast": self.kind}  # fmt: skip
        if not path.with_name(path.name + ".json").is_file():
            others = [self.stats(hookpoint, c) for c in self.inputs.prompt_set.kinds[self.kind]
                      if c != concept]  # fmt: skip
            features = select_contrastive(self.stats(hookpoint, concept), others, tau=tau,
                                          max_other_ratio=ratio)  # fmt: skip
            features.concept = concept
            features.meta.update(hookpoint=hookpoint, selection=selection)
            features.meta[SAE_FINGERPRINT] = self.sae(hookpoint).fingerprint()
            path.parent.mkdir(parents=True, exist_ok=True)
            features.save(path)
        sha = file_sha256(path.with_name(path.name + ".safetensors"))
        return FeaturesRef(path=str(path), sha256=sha, selection=selection)

    def edits(self, setting: dict[str, Any]) -> list[Edit]:
        rule = setting["rule"]
        tau, ratio = int(setting["tau"]), setting.get("max_other_ratio")
        members = [c for c in self.inputs.prompt_set.kinds[self.kind] if c != self.concept]
        edits = []
        for hookpoint in setting["sites"].split(SITE_JOIN):
            text = prompt_encoder_of(hookpoint) is not None
            sae = self.sae(hookpoint)
            anchors = []
            if rule == "anchor":
                first = setting["anchor"]
                # The anchor, then the others of the kind: what replaces it when it is erased.
                order = [first, *[c for c in members if c != first]][:4]
                anchors = [
                    AnchorRef(concept=c, features=self.features_ref(c, hookpoint, tau, ratio))
                    for c in order
                ]
            window = None if text or setting.get("window", "all") == "all" else [
                float(v) for v in setting["window"].split(":")
            ]  # fmt: skip
            site = sae.meta.get("activation_site", "output")
            strength = setting["strength_text" if text else "strength_denoiser"]
            halves = "cond" if site == "guidance" else setting.get("cfg_half", "cond")
            edits.append(Edit(
                hookpoint=hookpoint, activation_site=site,
                sae=SaeRef(path=str(self.inputs.saes.resolve()), fingerprint=sae.fingerprint()),
                features=self.features_ref(self.concept, hookpoint, tau, ratio),
                rule=rule, strength=float(strength), window=window, cfg_half=halves,
                anchors=anchors,
            ))  # fmt: skip
        return edits

    def recipe(self, setting: dict[str, Any], scores: dict[str, float] | None = None) -> Recipe:
        edits = self.edits(setting)
        hookpoints = sorted({e.hookpoint for e in edits})
        return Recipe(
            base_model=BaseModelRef(
                id=self.inputs.model,
                fingerprint=pipeline_fingerprint(self.inputs.pipe, hookpoints),
            ),
            sampling=SamplingRef(num_inference_steps=self.inputs.steps,
                                 guidance_scale=self.inputs.guidance),  # fmt: skip
            concepts={self.concept: ConceptRecipe(kind=self.kind, edits=edits,
                                                  scores=scores or {})},  # fmt: skip
        )


def suggest_setting(
    trial: Any, cfg: TuneConfig, inputs: TuneInputs, concept: str
) -> dict[str, Any]:
    """One point of the search space (conditional: an anchor only for ``anchor``, ...)."""
    kind = inputs.prompt_set.kind_of(concept)
    sites = trial.suggest_categorical("sites", inputs.site_sets)
    rules = [r for r in cfg.rules if r != "anchor" or len(inputs.prompt_set.kinds[kind]) > 1]
    rule = trial.suggest_categorical("rule", rules)
    text_range, denoiser_range = STRENGTH_RANGES[rule]
    setting: dict[str, Any] = {"sites": sites, "rule": rule}
    hookpoints = sites.split(SITE_JOIN)

    def strength(name: str, low_high: tuple[float, float]) -> float:
        if cfg.strengths:
            return float(trial.suggest_categorical(name, cfg.strengths))
        return float(trial.suggest_float(name, *low_high))

    if any(prompt_encoder_of(h) for h in hookpoints):
        setting["strength_text"] = strength(f"strength_text_{rule}", text_range)
    if not all(prompt_encoder_of(h) for h in hookpoints):
        setting["strength_denoiser"] = strength(f"strength_denoiser_{rule}", denoiser_range)
        setting["window"] = trial.suggest_categorical("window", cfg.windows)
        setting["cfg_half"] = trial.suggest_categorical("cfg_half", cfg.halves)
    setting["tau"] = trial.suggest_categorical("tau", cfg.taus)
    setting["max_other_ratio"] = trial.suggest_categorical("max_other_ratio", cfg.ratios)
    if rule == "anchor":
        others = [c for c in inputs.prompt_set.kinds[kind] if c != concept]
        setting["anchor"] = trial.suggest_categorical("anchor", others)
    return setting


def grid_settings(cfg: TuneConfig, inputs: TuneInputs, concept: str) -> list[dict[str, Any]]:
    """Every point of the search space once, with ``cfg.strengths`` as the strengths: the
    settings :func:`suggest_setting` can return, in a fixed order (the ``grid`` sampler)."""
    kind = inputs.prompt_set.kind_of(concept)
    others = [c for c in inputs.prompt_set.kinds[kind] if c != concept]
    rules = [r for r in cfg.rules if r != "anchor" or others]
    settings: list[dict[str, Any]] = []
    for sites in inputs.site_sets:
        hookpoints = sites.split(SITE_JOIN)
        text = any(prompt_encoder_of(h) for h in hookpoints)
        denoiser = not all(prompt_encoder_of(h) for h in hookpoints)
        for rule in rules:
            axes: list[tuple[str, list[Any]]] = []
            if text:
                axes.append(("strength_text", list(cfg.strengths)))
            if denoiser:
                axes += [("strength_denoiser", list(cfg.strengths)),
                         ("window", list(cfg.windows)), ("cfg_half", list(cfg.halves))]
            axes += [("tau", list(cfg.taus)), ("max_other_ratio", list(cfg.ratios))]
            if rule == "anchor":
                axes.append(("anchor", others))
            for values in itertools.product(*(v for _, v in axes)):
                setting = {"sites": sites, "rule": rule}
                setting.update({k: v for (k, _), v in zip(axes, values, strict=True)})
                settings.append(setting)
    return settings


def enqueued_params(setting: dict[str, Any]) -> dict[str, Any]:
    """A setting (as :func:`suggest_setting` returns it, with plain ``strength_text`` /
    ``strength_denoiser``) as the study's parameter names."""
    params = dict(setting)
    rule = params.get("rule", "ablate")
    for key in ("strength_text", "strength_denoiser"):
        if key in params:
            params[f"{key}_{rule}"] = params.pop(key)
    return params


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
    targets = inputs.targets
    weights = {**DEFAULT_WEIGHTS, **cfg.weights}
    work = (out.parent / f".{out.stem}.features").resolve()
    maker = RecipeMaker(inputs, cfg.concept, work)
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
        study.set_user_attr("targets", targets)
        study.set_user_attr("weights", weights)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        grid = grid_settings(cfg, inputs, cfg.concept) if cfg.sampler == "grid" else []
        queue = {json.dumps(enqueued_params(s), sort_keys=True): s for s in cfg.enqueued() + grid}
        if not study.trials:
            for setting in queue.values():
                study.enqueue_trial(enqueued_params(setting), skip_if_exists=True)
    # A grid runs each of its settings once, whatever --trials says.
    wanted = len(queue) if grid else cfg.trials
    cache: dict[str, RecipeAssets] = {}

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

    remaining = max(0, wanted - len(done))
    started = time.perf_counter()
    if remaining:
        bar = tqdm(total=remaining, desc=f"tune {cfg.concept}", unit="trial")
        with disk_full_names(where), bar:
            study.optimize(evaluate, n_trials=remaining, callbacks=[lambda *_: bar.update(1)],
                           gc_after_trial=False)  # fmt: skip
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: t.value)
    setting, scores = best.user_attrs["setting"], dict(best.user_attrs["scores"])
    if cfg.heldout and inputs.prompt_set.heldout_templates:
        held = evaluate_recipe(
            inputs, maker.recipe(setting), cfg.concept, cfg.batch_size,
            inputs.prompt_set.heldout_templates, cache.get("assets"),
        )  # fmt: skip
        scores.update({f"heldout_{k}": v for k, v in held.items() if k in ("UA", "IRA", "CRA")})
    kept = {k: v for k, v in scores.items()
            if k in ("UA", "IRA", "CRA", ATTACKED) or "heldout_" in k}  # fmt: skip
    recipe = maker.recipe(setting, kept)
    recipe.tuning = {
        "tuner": "saeuron tune (Optuna TPE)" if not grid else "saeuron tune (grid)",
        "study": study.study_name,
        "trials": len(complete), "best_trial": best.number, "objective": best.value,
        "targets": targets, "weights": weights, "prompt_set": inputs.prompt_set.name,
        "images_per_trial": int(scores.get("n_images", 0)),
        "trials_table": out.with_suffix(".trials.csv").name,
        "objective_formula": "-sum(weight * max(0, target - score)) + 0.001 * mean(scores)"
        + (" - max(0, attack_target - UA_attacked)" if cfg.attack_prompts else ""),
    }  # fmt: skip
    if cfg.enqueue:
        # Where the search started (a known setting), so the record says so.
        recipe.tuning["enqueued"] = cfg.enqueued()
    if cfg.attack_prompts:
        recipe.tuning["attack"] = {
            "search": "unlearndiffatk", "budget": cfg.attack_budget,
            "prompts": cfg.attack_prompts, "target": cfg.attack_target,
        }  # fmt: skip
    recipe.description = (
        f"Erases {cfg.concept!r} from {inputs.model} by editing SAE features at "
        + ", ".join(_site_words(e) for e in recipe.concepts[cfg.concept].edits)
        + "; made by saeuron tune on validation prompts."
    )
    write_recipe(recipe, out, work)
    # The selection cache is remade on a resume; only what the recipe names stays.
    shutil.rmtree(work, ignore_errors=True)
    write_trials(complete, out.with_suffix(".trials.csv"))
    plot_tradeoff(complete, best.number, out.with_suffix(".tradeoff.png"), cfg.concept)
    return {"recipe": str(out), "best": setting, "scores": scores, "objective": best.value,
            "trials": len(complete), "ran": remaining,
            "seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def _site_words(edit: Edit) -> str:
    if prompt_encoder_of(edit.hookpoint):
        return f"the text encoder ({edit.hookpoint})"
    site = "guidance (cond - uncond)" if edit.activation_site == "guidance" else "output"
    return f"the denoiser block {edit.hookpoint} ({site})"


def write_recipe(recipe: Recipe, out: Path, work: Path) -> Path:
    """``recipe`` at ``out``, its features copied into ``features/`` beside it and every path
    made relative to it (so the folder moves as one)."""
    base = out.parent.resolve()
    for entry in recipe.concepts.values():
        for edit in entry.edits:
            for ref in (edit.features, *(a.features for a in edit.anchors)):
                source = Path(ref.path)
                target = base / "features" / source.relative_to(work)
                copy_features(source, target)
                ref.path = os.path.relpath(target, base)
            if edit.sae.path:
                edit.sae.path = os.path.relpath(Path(edit.sae.path).resolve(), base)
    return recipe.save(out)


def write_trials(trials: Sequence[Any], path: Path) -> Path:
    keys = sorted({k for t in trials for k in t.user_attrs.get("setting", {})})
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "objective", *keys, "UA", "IRA", "CRA", ATTACKED, "n_images",
                         "seconds"])  # fmt: skip
        for t in sorted(trials, key=lambda t: t.number):
            s, sc = t.user_attrs.get("setting", {}), t.user_attrs.get("scores", {})
            writer.writerow([t.number, f"{t.value:.4f}", *(s.get(k, "") for k in keys),
                             *(f"{sc.get(m, float('nan')):.3f}" for m in ("UA", "IRA", "CRA")),
                             f"{sc[ATTACKED]:.3f}" if ATTACKED in sc else "",
                             sc.get("n_images", ""), t.user_attrs.get("seconds", "")])  # fmt: skip
    return path


def plot_tradeoff(trials: Sequence[Any], best: int, path: Path, concept: str) -> Path:
    """UA (x) against mean retention (y) per trial, the chosen one ringed: a PNG."""
    size, pad = 420, 48
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    span = size - 2 * pad

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + x * span, size - pad - y * span

    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    for tick in (0.0, 0.5, 1.0):
        x, y = at(tick, tick)
        draw.text((x - 8, size - pad + 6), f"{tick:.1f}", fill="black")
        draw.text((6, y - 6), f"{tick:.1f}", fill="black")
    draw.text((size / 2 - 70, size - 20), "UA (forgetting)", fill="black")
    draw.text((6, 8), f"retention (mean IRA, CRA): tune {concept}", fill="black")
    for t in trials:
        sc = t.user_attrs.get("scores", {})
        kept = [v for v in (sc.get("IRA"), sc.get("CRA")) if v is not None and not math.isnan(v)]
        if sc.get("UA") is None or not kept:
            continue
        x, y = at(float(sc["UA"]), float(np.mean(kept)))
        r = 7 if t.number == best else 3
        colour = "red" if t.number == best else "steelblue"
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour,
                     fill=None if t.number == best else colour)  # fmt: skip
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
