"""``saeuron minicanvas train | assets | sweep | bench | sequential | saemnesia | guided``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from saeuron.eval.attacks.budgets import ATTACK_BUDGETS
from saeuron.eval.attacks.unlearndiffatk import UnlearnDiffSettings, unlearn_diff_atk
from saeuron.minicanvas.assets import AssetConfig, build_assets
from saeuron.minicanvas.bench import BenchConfig, run_bench
from saeuron.minicanvas.classifier import train_classifier
from saeuron.minicanvas.guided import GuidedBuildConfig, build_guided
from saeuron.minicanvas.guided_sweep import GuidedSweepConfig, run_guided_sweep
from saeuron.minicanvas.model import ModelTrainConfig, train_minicanvas
from saeuron.minicanvas.saemnesia import (
    SupervisedBuildConfig,
    SupervisedSweepConfig,
    build_supervised,
    run_supervised_sweep,
)
from saeuron.minicanvas.sequential import SequentialConfig, run_sequential
from saeuron.minicanvas.sweep import SweepConfig, run_sweep
from saeuron.utils.config import check_choice
from saeuron.utils.files import BUNDLE_CLASSIFIER_DIR

PARTS = ("all", "model", "classifier")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="MiniCanvas, the small model shipped with saeuron: train it, build its SAEs "
        "and concept features, tune them, and benchmark erasure on it.",
    )
    steps = parser.add_subparsers(dest="minicanvas_command", metavar="STEP")
    steps.required = True

    train = steps.add_parser("train", help="train the model and its classifier from a seed")
    train.add_argument(
        "--part", default="all", metavar="{" + ",".join(PARTS) + "}", help="what to train"
    )
    ModelTrainConfig.add_arguments(train)
    train.set_defaults(handler=_train)

    assets = steps.add_parser("assets", help="SAEs, concept statistics and features")
    AssetConfig.add_arguments(assets)
    assets.set_defaults(handler=_assets)

    sweep = steps.add_parser("sweep", help="tune tau and multiplier per concept on validation")
    SweepConfig.add_arguments(sweep)
    sweep.set_defaults(handler=_sweep)

    bench = steps.add_parser("bench", help="UA / IRA / CRA for every concept erased in turn")
    BenchConfig.add_arguments(bench)
    bench.set_defaults(handler=_bench)

    sequential = steps.add_parser(
        "sequential", help="erase 1, 2, ... concepts together: UA of each after every step"
    )
    SequentialConfig.add_arguments(sequential)
    sequential.set_defaults(handler=_sequential)

    saemnesia = steps.add_parser(
        "saemnesia", help="SAEmnesia: supervised SAEs (build) and their gamma-only tuning (sweep)"
    )
    stages = saemnesia.add_subparsers(dest="saemnesia_command", metavar="STEP")
    stages.required = True
    build = stages.add_parser("build", help="fine-tune a supervised SAE per hookpoint")
    SupervisedBuildConfig.add_arguments(build)
    build.set_defaults(handler=_saemnesia_build)
    tune = stages.add_parser("sweep", help="tune each concept's multiplier on validation")
    SupervisedSweepConfig.add_arguments(tune)
    tune.set_defaults(handler=_saemnesia_sweep)

    guided = steps.add_parser(
        "guided", help="SAEs on what the prompt adds (guidance site): build, and tune per concept"
    )
    guided_steps = guided.add_subparsers(dest="guided_command", metavar="STEP")
    guided_steps.required = True
    gbuild = guided_steps.add_parser("build", help="capture the guidance site, train SAEs, stats")
    GuidedBuildConfig.add_arguments(gbuild)
    gbuild.set_defaults(handler=_guided_build)
    gsweep = guided_steps.add_parser(
        "sweep", help="per concept: block, rule, tau, gamma on validation prompts and seeds"
    )
    GuidedSweepConfig.add_arguments(gsweep)
    gsweep.set_defaults(handler=_guided_sweep)
    return parser


def _train(args: argparse.Namespace) -> int:
    check_choice("part", args.part, PARTS)
    cfg = ModelTrainConfig.from_args(args)
    out = cfg.output_folder()
    if args.part in ("all", "model"):
        train_minicanvas(cfg)
    if args.part in ("all", "classifier"):
        model, accuracy = train_classifier(seed=cfg.seed)
        model.save(out / BUNDLE_CLASSIFIER_DIR)
        print(f"classifier held-out accuracy: {json.dumps(accuracy)}")
    return 0


def _assets(args: argparse.Namespace) -> int:
    summary = build_assets(AssetConfig.from_args(args))
    print(json.dumps(summary["heldout_fvu"], indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    result = run_sweep(SweepConfig.from_args(args))
    print(json.dumps(result["chosen"], indent=2))
    print(f"{result['n_trials']} trials per concept")
    return 0


def _sequential(args: argparse.Namespace) -> int:
    report = run_sequential(SequentialConfig.from_args(args))
    print(report["table"])
    print(f"in {report['seconds'] / 60:.1f} min")
    return 0


def _saemnesia_build(args: argparse.Namespace) -> int:
    summary = build_supervised(SupervisedBuildConfig.from_args(args))
    for hookpoint, row in summary.items():
        first, best = row["first"], row["best"]
        print(
            f"{hookpoint}: {row['epochs']} epochs in {row['seconds']:.0f} s; held-out FVU "
            f"{first['fvu']:.3f} -> {best['fvu']:.3f}, BCE {first['bce']:.3f} -> {best['bce']:.3f}"
        )
    return 0


def _saemnesia_sweep(args: argparse.Namespace) -> int:
    result = run_supervised_sweep(SupervisedSweepConfig.from_args(args))
    print(json.dumps(result["chosen"], indent=2))
    print(f"{result['n_trials']} trials per concept")
    return 0


def _guided_build(args: argparse.Namespace) -> int:
    summary = build_guided(GuidedBuildConfig.from_args(args))
    print(json.dumps(summary["hookpoints"], indent=2))
    return 0


def quick_unlearndiffatk(
    technique: Any,
    prompts: list[str],
    seed: int,
    forbidden_words: list[str],
    flagged: Callable[[list[Any]], list[bool]],
) -> list[dict[str, Any]]:
    """UnlearnDiffAtk's search at its quick budget: the attack a guided sweep weighs."""
    settings = UnlearnDiffSettings(**ATTACK_BUDGETS["unlearndiffatk"].settings("quick"))
    return unlearn_diff_atk(technique, prompts, settings, seed, forbidden_words, flagged)


def _guided_sweep(args: argparse.Namespace) -> int:
    result = run_guided_sweep(GuidedSweepConfig.from_args(args), quick_unlearndiffatk)
    print(json.dumps(result["chosen"], indent=2))
    print(f"trials per concept: {json.dumps(result['n_trials'])}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = BenchConfig.from_args(args)
    report = run_bench(cfg)
    print(report["table"])
    print(f"wrote {cfg.out} in {report['seconds'] / 60:.1f} min")
    return 0
