"""The settings of ``saeuron tune`` (:mod:`saeuron.eval.tuning`), in a module of their own
so that ``saeuron tune --help`` reads them without loading torch or a model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from saeuron.erasure.edit_parts import StatsRef
from saeuron.minicanvas.config_parts import NAME
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel
from saeuron.models.sites import renamed_settings
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field
from saeuron.utils.config_parts import (
    BatchSize,
    Concept,
    Device,
    GuidanceScale,
    InferenceSteps,
    Output,
    Seed,
)

TUNABLE_RULES = ("ablate", "anchor", "scale", "project")
WINDOWS = ("all", "0:0.5", "0.5:1")
DEFAULT_TARGETS = {"UA": 0.9, "IRA": 0.9, "CRA": 0.9}
DEFAULT_WEIGHTS = {"UA": 1.0, "IRA": 1.0, "CRA": 1.0}
SITE_JOIN = "+"
"""Joins the hookpoints of a site set edited together (``A+B``)."""
ATTACKED = "UA_attacked"
"""A trial's score for UA after the attack (``--attack-prompts``)."""


@dataclass
class TuneConfig(ResolvesModel, Config):
    erased: Concept = field(Concept, flatten=True, help="the concept", required=("concept",),
                            describe={"concept": "the concept to erase (a member of the prompt "
                                      "set)"})  # fmt: skip
    output: Output = field(Output, flatten=True, help="where it goes", required=("out",),
                           describe={"out": "the recipe to write (NAME.json); trials and plot "
                                     "go beside it"})  # fmt: skip
    pipeline: ModelKey = field(ModelKey(model=NAME), flatten=True, help="the model",
                               required=("model",),
                                   describe={"model": "model id, local folder, or a bundled name"})
    trials: int = field(40, ge=1, le=100_000, help="complete trials the study should hold")
    prompt_set: str | None = field(None, help="prompt-set file; default: the bundle's")
    judge: str | None = field(
        None, help="judge name (minicanvas, unlearncanvas, clip, nudenet) or module:Class "
        "(from the command line or Python only); default: the bundle's"
    )
    judge_options: dict[str, Any] = field(
        {}, help="keyword arguments of the judge (JSON), e.g. {\"clip_model\": \"PATH\"} or "
        "{\"style_classifier\": \"style50.pth\", \"trust_pickle\": true}"
    )
    saes: str | None = field(
        None, help="folder with one SAE sub-folder per hookpoint; default: the bundle's"
    )
    stats_ref: StatsRef = field(
        StatsRef, flatten=True, help="the statistics",
        describe={"stats": "folder with <hookpoint>/<concept> statistics of every prompt-set "
                  "concept; default: the bundle's, else collected from the prompt set beside "
                  "--out"},
    )  # fmt: skip
    site_sets: list[str] = field(
        [], help="site sets to choose from ('A+B' edits at both); default: the bundle's for the "
        "concept's kind, else every site with an SAE and statistics, alone"
    )
    rules: list[str] = field(["ablate", "anchor"], help="rules to try")
    taus: list[int] = field([5, 10, 20], help="latents per step to try")
    strengths: list[float] = field(
        [], help="strengths to try, in place of each rule's range: e.g. the published grid's "
        "--strengths=-1,-5,-10,-15,-20,-25,-30 (default: the range)"
    )
    ratios: list[float] = field(
        [0.3, 0.5], help="specificity filters to try (max_other_ratio)"
    )
    windows: list[str] = field(["all"], help="windows to try: all, 0:0.5, 0.5:1")
    halves: list[str] = field(["cond"], help="CFG rows to try: cond, both")
    sampler: str = field(
        "tpe", choices=("tpe", "grid"), help="tpe: Optuna's TPE search for --trials trials; "
        "grid: every combination of --site-sets, --rules, --strengths, --taus, --ratios, "
        "--windows and --halves once (--trials is then the grid's size)"
    )
    enqueue: str | None = field(
        None, help="a setting (JSON object of trial parameters) or a JSON list of them, tried "
        "first: e.g. a known good one"
    )
    targets: dict[str, float] = field({}, help="UA/IRA/CRA targets; default: the bundle's or 0.9")
    weights: dict[str, float] = field({}, help="UA/IRA/CRA weights of the shortfall (default 1)")
    storage: str | None = field(
        None, help="Optuna storage URL; default: sqlite beside the recipe (resumable)"
    )
    study: str | None = field(None, help="study name; default: NAME of --out")
    # Optuna's samplers take a 32-bit seed.
    seeding: Seed = field(Seed, flatten=True, help="the sampler's seed",
                          describe={"seed": "sampler seed"}, limits={"seed": {"le": 2**32 - 1}})
    step_count: InferenceSteps = field(
        InferenceSteps, flatten=True, help="the steps", limits={"num_inference_steps": {"ge": 1}},
        describe={"num_inference_steps": "sampling steps; default: model's"})  # fmt: skip
    guidance_strength: GuidanceScale = field(
        GuidanceScale, flatten=True, help="the guidance",
        describe={"guidance_scale": "CFG scale; default: the model's"})  # fmt: skip
    batches: BatchSize = field(BatchSize(batch_size=50), flatten=True, help="the batches",
                               describe={"batch_size": "images per pipeline call"})  # fmt: skip
    runtime: Device = field(Device, flatten=True, help="where it samples", describe={
        "device": "cpu, cuda, cuda:N or mps; default: best available"})
    heldout: bool = field(True, help="score the chosen setting on the held-out phrasings too")
    attack_prompts: int = field(
        0, ge=0, le=1000, help="attack every trial that meets the targets with UnlearnDiffAtk "
        "on this many of its target prompts (first seed); UA after the attack then counts in "
        "the objective against --attack-target (0: no attack)"
    )
    attack_budget: str = field(
        "quick", choices=("quick", "published"), help="the attack's search budget"
    )
    attack_target: float = field(0.8, ge=0, le=1, help="UA after the attack aimed for")

    def __post_init__(self) -> None:
        super().__post_init__()
        self._resolve_model()
        if not str(self.out).endswith(".json"):
            raise ConfigError("out", f"got {self.out!r}; a recipe file ends in .json")
        for rule in self.rules:
            check_choice("rules", rule, TUNABLE_RULES)
        for window in self.windows:
            check_choice("windows", window, WINDOWS)
        for half in self.halves:
            check_choice("halves", half, ("cond", "both"))
        for tau in self.taus:
            check_range("taus", tau, ge=1, le=10_000)
        for strength in self.strengths:
            check_range("strengths", strength)
        if self.sampler == "grid" and not self.strengths:
            raise ConfigError(
                "strengths", "the grid sampler needs a list of strengths, e.g. -1,-5,-10"
            )
        for ratio in self.ratios:
            check_range("ratios", ratio, gt=0)
        for name, mapping in (("targets", self.targets), ("weights", self.weights)):
            for key, value in mapping.items():
                check_choice(name, key, tuple(DEFAULT_TARGETS))
                check_range(f"{name}.{key}", value, ge=0)
        self.enqueued()

    def enqueued(self) -> list[dict[str, Any]]:
        """The settings of ``enqueue``, parsed."""
        if self.enqueue is None:
            return []
        try:
            data = json.loads(self.enqueue)
        except ValueError:
            data = None
        items = data if isinstance(data, list) else [data]
        if not items or not all(isinstance(i, dict) for i in items):
            raise ConfigError("enqueue", f"got {self.enqueue!r}; expected a JSON object or list")
        return [renamed_settings(i) for i in items]
