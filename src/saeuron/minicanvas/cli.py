"""``saeuron minicanvas train | assets | sweep | bench | sequential | saemnesia``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from ..config import check_choice
from .assets import AssetConfig, build_assets
from .bench import BenchConfig, SweepConfig, run_bench, run_sweep
from .model import ModelTrainConfig

logger = logging.getLogger(__name__)

PARTS = ("all", "model", "classifier")


def _train(args: argparse.Namespace) -> int:
    from ..pipelines import BUNDLED_MODELS

    check_choice("part", args.part, PARTS)
    out = Path(getattr(args, "out", None) or BUNDLED_MODELS["minicanvas"])
    if args.part in ("all", "model"):
        from .model import train_minicanvas

        train_minicanvas(ModelTrainConfig.from_args(args, out=str(out)))
    if args.part in ("all", "classifier"):
        from .classifier import train_classifier

        model, accuracy = train_classifier(seed=getattr(args, "seed", 0))
        model.save(out / "classifier")
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
    from .sequential import SequentialConfig, run_sequential

    report = run_sequential(SequentialConfig.from_args(args))
    print(report["table"])
    print(f"in {report['seconds'] / 60:.1f} min")
    return 0


def _saemnesia_build(args: argparse.Namespace) -> int:
    from .saemnesia import SupervisedBuildConfig, build_supervised

    summary = build_supervised(SupervisedBuildConfig.from_args(args))
    for hookpoint, row in summary.items():
        first, best = row["first"], row["best"]
        print(
            f"{hookpoint}: {row['epochs']} epochs in {row['seconds']:.0f} s; held-out FVU "
            f"{first['fvu']:.3f} -> {best['fvu']:.3f}, BCE {first['bce']:.3f} -> {best['bce']:.3f}"
        )
    return 0


def _saemnesia_sweep(args: argparse.Namespace) -> int:
    from .saemnesia import SupervisedSweepConfig, run_supervised_sweep

    result = run_supervised_sweep(SupervisedSweepConfig.from_args(args))
    print(json.dumps(result["chosen"], indent=2))
    print(f"{result['n_trials']} trials per concept")
    return 0


def _bench(args: argparse.Namespace) -> int:
    report = run_bench(BenchConfig.from_args(args))
    print(report["table"])
    print(
        f"wrote {args.out if hasattr(args, 'out') else 'minicanvas-bench'} "
        f"in {report['seconds'] / 60:.1f} min"
    )
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "minicanvas", help="the bundled MiniCanvas model: train, build assets, tune, benchmark"
    )
    sub = parser.add_subparsers(dest="minicanvas_command", metavar="STEP")
    sub.required = True

    train = sub.add_parser("train", help="train the model and its classifier from a seed")
    train.add_argument("--part", default="all", help=f"what to train: {', '.join(PARTS)}")
    ModelTrainConfig.add_arguments(train)
    train.set_defaults(handler=_train)

    assets = sub.add_parser("assets", help="SAEs, concept statistics and features")
    AssetConfig.add_arguments(assets)
    assets.set_defaults(handler=_assets)

    sweep = sub.add_parser("sweep", help="tune tau and multiplier per concept on validation")
    SweepConfig.add_arguments(sweep)
    sweep.set_defaults(handler=_sweep)

    bench = sub.add_parser("bench", help="UA / IRA / CRA for every concept erased in turn")
    BenchConfig.add_arguments(bench)
    bench.set_defaults(handler=_bench)

    from .sequential import SequentialConfig

    sequential = sub.add_parser(
        "sequential", help="erase 1, 2, ... concepts together: UA of each after every step"
    )
    SequentialConfig.add_arguments(sequential)
    sequential.set_defaults(handler=_sequential)

    from .saemnesia import SupervisedBuildConfig, SupervisedSweepConfig

    saemnesia = sub.add_parser(
        "saemnesia", help="SAEmnesia: supervised SAEs (build) and their gamma-only tuning (sweep)"
    )
    steps = saemnesia.add_subparsers(dest="saemnesia_command", metavar="STEP")
    steps.required = True
    build = steps.add_parser("build", help="fine-tune a supervised SAE per hookpoint")
    SupervisedBuildConfig.add_arguments(build)
    build.set_defaults(handler=_saemnesia_build)
    tune = steps.add_parser("sweep", help="tune each concept's multiplier on validation")
    SupervisedSweepConfig.add_arguments(tune)
    tune.set_defaults(handler=_saemnesia_sweep)
