"""Tuning the guided MiniCanvas erasure on validation prompts and seeds: per concept, the
block, rule, tau, gamma and window that come closest to the benchmark's targets.

Trials add to ``guided/sweep.json``; the winners go to ``guided/params.json`` (see
:mod:`saeuron.minicanvas.guided`).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from saeuron.erasure.erase import RULES, EraseConfig
from saeuron.minicanvas.assets import concept_kind, writable_bundle_folder
from saeuron.minicanvas.guided import (
    PARAMS_FILE,
    SWEEP_FILE,
    GuidedAssets,
    GuidedTechnique,
    GuidedTechniqueConfig,
)
from saeuron.minicanvas.judge import (
    MiniCanvasJudge,
    _concept_index,
    diagonal_subset,
    prompt_rows,
    scores,
)
from saeuron.minicanvas.world import (
    ANCHOR_TEMPLATES,
    OBJECTS,
    STYLES,
    TEST_SEEDS,
    VALIDATION_SEEDS,
    WIDE_VALIDATION_SEEDS,
)
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field
from saeuron.utils.io import atomic_write_json, read_json_or_empty

logger = logging.getLogger(__name__)

OBJECTIVES = ("shortfall", "mean")
BLOCK_JOIN = "+"
"""Joins the blocks of one setting in ``hookpoints`` ('A+B': erase at both)."""
SAE_FINGERPRINTS = "sae_fingerprints"
"""A trial's key for the fingerprints of the SAEs it erased with, by block."""
ATTACK = "attack"
"""A trial's key for the settings of the attack it was measured under."""
UA_ATTACKED = "UA_attacked"
"""A trial's key for UA after that attack."""
# The benchmark's targets: what the "shortfall" objective measures the distance to.
TARGETS = {"style": (0.95, 0.90, 0.90), "object": (0.90, 0.90, 0.90)}
ATTACK_TARGET = 0.80
"""UA after the attack, averaged over erased concepts: the benchmark's robustness target."""

AttackSearch = Callable[[Any, list[str], int, list[str], Callable[[list[Any]], list[bool]]],
                        list[dict[str, Any]]]  # fmt: skip
"""``(technique, prompts, seed, forbidden_words, flagged) -> found``: an attack's search
(UnlearnDiffAtk's signature), found prompts carrying ``prompt``; given by the caller, since
attacks live in a layer above this one."""


def objective(
    trial: dict[str, Any], kind: str, name: str = "shortfall", attack: dict[str, Any] | None = None
) -> float:
    """What a guided sweep maximises.

    ``mean``: the mean of UA, IRA and CRA (the SAeUron sweep's). ``shortfall``: minus the
    summed distance below each target (UA, IRA, CRA), plus a thousandth of the mean to break
    ties: a setting that trades CRA for UA loses as much as one that trades UA for CRA.
    With ``attack`` (the sweep's attack settings), the distance of UA after that attack below
    :data:`ATTACK_TARGET` counts too; a trial never attacked so (or attacked otherwise)
    counts as UA 0 after it.
    """
    check_choice("objective", name, OBJECTIVES)
    mean = (trial["UA"] + trial["IRA"] + trial["CRA"]) / 3
    attacked = 0.0
    if attack is not None and trial.get(ATTACK) == attack:
        attacked = float(trial[UA_ATTACKED])
    if name == "mean":
        return mean if attack is None else (3 * mean + attacked) / 4
    ua, ira, cra = TARGETS[kind]
    short = (
        max(0.0, ua - trial["UA"]) + max(0.0, ira - trial["IRA"]) + max(0.0, cra - trial["CRA"])
    )
    if attack is not None:
        short += max(0.0, ATTACK_TARGET - attacked)
    return -short + 1e-3 * mean


@dataclass
class GuidedSweepConfig(Config):
    concepts: list[str] | None = field(None, help="concepts to tune; default: all 20")
    hookpoints: list[str] | None = field(
        None,
        help="blocks to choose from per concept; 'A+B' erases at both blocks together; "
        "default: every guided SAE built whose statistics hold the concept",
    )
    rules: list[str] = field(["ablate"], help="edit rules to try (see saeuron.erasure.erase.RULES)")
    taus: list[int] = field([5, 10], help="latents per step to try")
    multipliers: list[float] = field([-2.0, -5.0, -10.0, -20.0], help="gammas to try")
    block_multipliers: dict[str, float] = field(
        {}, help="a fixed gamma at these blocks whatever the swept one (JSON block -> gamma): "
        "e.g. a concept's denoiser blocks kept at their tuned gamma while its text-encoder "
        "gamma is swept, in 'A+B' block sets"
    )
    max_other_ratio: float | None = field(
        0.3, help="specificity filter: drop latents that fire on any other concept above r x"
    )
    gates: list[float] = field(
        [0.0], help="thresholds to try, as a share of each latent's mean activation where it "
        "fires on the concept (0: the paper's threshold alone)"
    )
    windows: list[str] = field(
        ["all"], help="schedule windows to try: 'all' or 'START:END' (0 = first step, 1 = last)"
    )
    anchors: dict[str, str] = field(
        {}, help="for rule 'anchor': the anchor concept of each erased concept (JSON)"
    )
    objective: str = field("shortfall", help="'shortfall' (distance below the targets) or 'mean'")
    num_inference_steps: int = field(20, help="DDIM steps")
    guidance_scale: float = field(7.5, help="CFG scale")
    batch_size: int = field(50, help="images per pipeline call")
    retain_every: int = field(3, help="judge retention on every N-th retained prompt")
    seeds: list[int] = field(
        list(WIDE_VALIDATION_SEEDS), ge=0, le=2**63 - 1,
        help="validation seeds of the erased concept's images (never the test seeds); "
        "retention uses the first",
    )
    model: str = field("minicanvas", help="the MiniCanvas pipeline")
    write: bool = field(True, help="write guided/params.json and sweep.json")
    attack_prompts: int = field(
        0, ge=0, le=100, help="attack every trial that meets the targets with the quick "
        "UnlearnDiffAtk on this many of its validation prompts (first seed), and count UA "
        "after the attack (target 0.80) in the objective; 0: no attack"
    )

    def __post_init__(self) -> None:
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        for concept in self.concepts:
            concept_kind(concept)
        for rule in self.rules:
            check_choice("rules", rule, RULES)
        check_choice("objective", self.objective, OBJECTIVES)
        if not self.taus or not self.multipliers:
            raise ConfigError("taus", "the grid needs at least one tau and one multiplier")
        for tau in self.taus:
            check_range("taus", tau, ge=1)
        check_range("retain_every", self.retain_every, ge=1)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds", f"got {self.seeds!r}; give distinct seeds")
        if set(self.seeds) & set(TEST_SEEDS):
            raise ConfigError(
                "seeds", f"got {self.seeds!r}; the test seeds {list(TEST_SEEDS)} are never tuned on"
            )
        if self.max_other_ratio is not None:
            check_range("max_other_ratio", self.max_other_ratio, gt=0)
        for window in self.windows:
            parse_window(window)
        for gate in self.gates:
            check_range("gates", gate, ge=0, le=10)
        if "anchor" in self.rules:
            missing = [c for c in self.concepts if c not in self.anchors]
            if missing:
                raise ConfigError("anchors", f"rule 'anchor' needs an anchor for {missing}")


def block_gammas(
    blocks: list[str], gamma: float, fixed: dict[str, float]
) -> float | list[float]:
    """A trial's multiplier: the swept ``gamma`` at every block but those ``fixed``; one
    number when every block has the same (the params' short form)."""
    gammas = [float(fixed.get(b, gamma)) for b in blocks]
    return gammas[0] if len(set(gammas)) == 1 else gammas


def parse_window(text: str) -> list[float] | None:
    """``'all'`` -> None (every step); ``'0.5:1'`` -> [0.5, 1.0], checked like EraseConfig's."""
    if text.strip().lower() == "all":
        return None
    try:
        window = [float(v) for v in text.split(":")]
    except ValueError:
        raise ConfigError("windows", f"got {text!r}; expected 'all' or 'START:END'") from None
    try:
        return EraseConfig(window=window).window
    except ConfigError as err:
        raise ConfigError("windows", str(err)) from None


def _trial_key(trial: dict[str, Any]) -> str:
    return json.dumps({k: trial.get(k) for k in ("hookpoint", "rule", "tau", "multiplier",
                                                 "max_other_ratio", "anchor", "window", "gate")},
                      sort_keys=True)  # fmt: skip


def comparable_trials(
    previous: dict[str, Any],
    retain_every: int,
    seeds: list[int],
    fingerprints: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """A concept's recorded trials, by setting, if they were judged on the same images with
    the same SAEs.

    Trials measured on other images are not comparable and are dropped; records from before
    the seeds were a setting used the first two validation seeds. A trial stamped with the
    fingerprint of an SAE that has since been rebuilt at one of its blocks (``fingerprints``:
    block -> the current SAE's) measured another edit and is dropped too; a trial from
    before the stamps is kept.
    """
    same = previous.get("retain_every") == retain_every and previous.get(
        "seeds", list(VALIDATION_SEEDS)
    ) == list(seeds)
    if not same:
        return {}
    current = fingerprints or {}
    return {
        _trial_key(t): t
        for t in previous.get("trials", [])
        if all(current.get(b, fp) == fp for b, fp in t.get(SAE_FINGERPRINTS, {}).items())
    }


def attacked_ua(
    judge: MiniCanvasJudge,
    concept: str,
    setting: dict[str, Any],
    prompts: list[str],
    seed: int,
    search: AttackSearch,
    cfg: GuidedSweepConfig,
) -> float:
    """UA after ``search`` attacks ``concept`` erased with ``setting``: the attack's prompts
    sampled with the erasure, seed ``seed + i`` for prompt ``i`` (as the eval metric does),
    judged by the MiniCanvas classifier."""
    technique = GuidedTechnique(
        GuidedTechniqueConfig(
            erase_concept=concept, model=str(judge.folder),
            num_inference_steps=cfg.num_inference_steps, guidance_scale=cfg.guidance_scale,
            batch_size=cfg.batch_size, params=setting,
        ),
        pipe=judge.pipe,
    )  # fmt: skip
    kind, index = _concept_index(concept)

    def flagged(images: list[Any]) -> list[bool]:
        objects, styles = judge.classifier.predict(images)
        return [bool(v) for v in (objects if kind == "object" else styles) == index]

    found = search(technique, prompts, seed, concept.split(), flagged)
    after = technique.generate([f["prompt"] for f in found], [seed + i for i in range(len(found))])
    ua = 1.0 - sum(flagged(after)) / len(after)
    logger.info("%s %s: UA %.2f after the attack", concept, setting, ua)
    return ua


def run_guided_sweep(
    cfg: GuidedSweepConfig, attack_search: AttackSearch | None = None
) -> dict[str, Any]:
    """Per concept, the best setting on validation phrasing and seeds by ``cfg.objective``.

    With ``cfg.attack_prompts``, ``attack_search`` attacks each trial that meets the targets
    (the CLI gives UnlearnDiffAtk at its quick budget).

    Trials add to ``guided/sweep.json`` (a trial of the same setting is replaced), so the
    winner is the best of every grid tried under the same protocol; the trial count per
    concept is recorded.
    """
    if cfg.attack_prompts and attack_search is None:
        raise ConfigError("attack_prompts", "needs an attack search (the CLI passes one)")
    attack = None
    if cfg.attack_prompts:
        # Named by the search itself: UA after one attack is not comparable with another's.
        attack = {"search": getattr(attack_search, "__name__", repr(attack_search)),
                  "prompts": cfg.attack_prompts, "seed": cfg.seeds[0]}  # fmt: skip
    # A sweep that writes works on the bundle it writes to (never the package's own).
    model = str(writable_bundle_folder(cfg.model)) if cfg.write else cfg.model
    judge = MiniCanvasJudge(model, cfg.num_inference_steps, cfg.guidance_scale)
    assets = GuidedAssets(judge.folder)
    built = sorted(p.name for p in (assets.folder / "saes").iterdir() if p.is_dir())
    unbuilt = {b for h in cfg.hookpoints or [] for b in h.split(BLOCK_JOIN)} - set(built)
    if unbuilt:
        raise ConfigError("hookpoints", f"no guided SAE at {sorted(unbuilt)}; built: {built}")
    record = read_json_or_empty(assets.folder / SWEEP_FILE)
    # Every built block's, so a trial at a block this sweep leaves out is checked too.
    current = {b: assets.fingerprint(b) for b in built}
    template = ANCHOR_TEMPLATES[1]
    seeds = list(cfg.seeds)
    chosen: dict[str, dict[str, Any]] = {}
    for concept in tqdm(cfg.concepts, desc="guided sweep", unit="concept"):
        kind = concept_kind(concept)
        index = _concept_index(concept)
        target_rows = prompt_rows(template, seeds, only=index)
        retain_rows = diagonal_subset(
            prompt_rows(template, seeds[:1], only=index, exclude=True), cfg.retain_every
        )
        # By default, the blocks whose statistics hold this concept (a build may keep one
        # kind per block).
        hookpoints = cfg.hookpoints or [
            h for h in built if assets.has_stats(h, concept)
        ]
        if not hookpoints:
            raise ConfigError(
                "concepts", f"no guided statistics hold {concept!r}: run `saeuron minicanvas "
                "guided build`"
            )
        trials = comparable_trials(record.get(concept, {}), cfg.retain_every, seeds, current)
        for hookpoint, rule, tau, gamma, window, gate in itertools.product(
            hookpoints, cfg.rules, cfg.taus, cfg.multipliers, cfg.windows, cfg.gates
        ):
            blocks = hookpoint.split(BLOCK_JOIN)
            setting: dict[str, Any] = {
                "hookpoint": blocks[0] if len(blocks) == 1 else blocks,
                "rule": rule, "tau": tau,
                "multiplier": block_gammas(blocks, gamma, cfg.block_multipliers),
                "max_other_ratio": cfg.max_other_ratio,
                "anchor": cfg.anchors.get(concept) if rule == "anchor" else None,
                "window": parse_window(window),
                "gate": gate or None,
            }  # fmt: skip
            with assets.erasing(judge.pipe, [concept], {concept: setting}):
                target = judge.run(target_rows, None, cfg.batch_size, desc=concept)
                retain = judge.run(retain_rows, None, cfg.batch_size, desc=f"{concept} retain")
            score = scores(concept, target, retain)
            # Only a trial that meets the targets is worth an attack (minutes each).
            if attack is not None and attack_search is not None and objective(score, kind) >= 0:
                prompts = [r[0] for r in target_rows if r[3] == seeds[0]][: cfg.attack_prompts]
                score[UA_ATTACKED] = attacked_ua(judge, concept, setting, prompts, seeds[0],
                                                 attack_search, cfg)  # fmt: skip
                score[ATTACK] = attack
            stamp = {SAE_FINGERPRINTS: {b: current[b] for b in blocks}}
            trials[_trial_key(setting)] = {**setting, **score, **stamp}
            logger.info("%s %s: %s", concept, setting, score)
        ranked = list(trials.values())
        best = max(ranked, key=lambda t: objective(t, kind, cfg.objective, attack))
        chosen[concept] = {
            k: best[k] for k in ("hookpoint", "rule", "tau", "multiplier", "max_other_ratio",
                                 "anchor", "window", "gate") if best.get(k) is not None
        }  # fmt: skip
        record[concept] = {
            "retain_every": cfg.retain_every,
            "seeds": seeds,
            "objective": cfg.objective,
            "chosen": chosen[concept],
            "n_trials": len(ranked),
            "trials": ranked,
        }
        logger.info("%s: best %s", concept, chosen[concept])
        if cfg.write:
            # After every concept: a killed sweep keeps what it measured.
            params = read_json_or_empty(assets.folder / PARAMS_FILE)
            params[concept] = chosen[concept]
            atomic_write_json(assets.folder / PARAMS_FILE, params)
            atomic_write_json(assets.folder / SWEEP_FILE, record)
    return {
        "chosen": chosen,
        "n_trials": {c: record[c]["n_trials"] for c in chosen},
        "trials": {c: record[c]["trials"] for c in chosen},
    }
