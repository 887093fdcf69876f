"""Tuning SAeUron's tau and multiplier per MiniCanvas concept, on validation prompts only.

Trials add to ``sweep.json`` beside the bundle, so the winner is the best of every grid tried
under the same protocol.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from saeuron.erasure.erase import MAX_MULTIPLIER
from saeuron.minicanvas.assets import (
    PARAMS_FILE,
    concept_kind,
    load_params,
    writable_bundle_folder,
    write_features,
)
from saeuron.minicanvas.judge import MiniCanvasJudge, evaluate
from saeuron.minicanvas.world import ANCHOR_TEMPLATES, OBJECTS, STYLES, VALIDATION_SEEDS
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.files import SWEEP
from saeuron.utils.io import atomic_write_json, read_json_or_empty

logger = logging.getLogger(__name__)

SWEEP_FILE = SWEEP


@dataclass
class SweepConfig(Config):
    taus: list[int] = field([1, 2, 3], ge=1, le=1000, help="latents per step to try")
    multipliers: list[float] = field(
        [-1.0, -5.0, -10.0, -20.0, -30.0],
        ge=-MAX_MULTIPLIER,
        le=MAX_MULTIPLIER,
        help="gammas to try",
    )
    max_other_ratio: float | None = field(
        None,
        gt=0,
        le=1000,
        help="specificity filter of the features tried (see select_contrastive)",
    )
    concepts: list[str] | None = field(None, help="concepts to tune; default: all 20")
    num_inference_steps: int = field(20, ge=1, le=1000, help="DDIM steps")
    guidance_scale: float = field(7.5, ge=0, le=100, help="CFG scale")
    batch_size: int = field(50, ge=1, le=4096, help="images per pipeline call")
    retain_every: int = field(
        2,
        ge=1,
        le=1000,
        help="judge retention on every N-th retained prompt (the sweep runs many trials)",
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
    # A sweep that writes works on the bundle it writes to (never the package's own).
    model = str(writable_bundle_folder(cfg.model)) if cfg.write else cfg.model
    judge = MiniCanvasJudge(model, cfg.num_inference_steps, cfg.guidance_scale)
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
