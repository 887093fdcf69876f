"""``saeuron minicanvas train | assets | bench | sequential | saemnesia | guided``.

Tuning lives in ``saeuron tune`` (the bundle supplies its SAEs, statistics, prompts and judge).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

# Only the torch-free settings: each handler imports the model code it runs once its settings
# are checked, so that --help and a bad flag answer without loading torch.
from saeuron.minicanvas.assets_config import AssetConfig
from saeuron.minicanvas.bench_config import BenchConfig
from saeuron.minicanvas.guided_config import GuidedBuildConfig
from saeuron.minicanvas.model_config import ModelTrainConfig
from saeuron.minicanvas.saemnesia_config import SupervisedBuildConfig
from saeuron.minicanvas.sequential_config import SequentialConfig
from saeuron.utils.config import check_choice
from saeuron.utils.files import BUNDLE_CLASSIFIER_DIR

PARTS = ("all", "model", "classifier")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="MiniCanvas, the small model shipped with saeuron: train it, build its SAEs "
        "and concept features, and benchmark erasure on it (recipes are tuned with "
        "`saeuron tune --model minicanvas`).",
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

    bench = steps.add_parser("bench", help="UA / IRA / CRA for every concept erased in turn")
    BenchConfig.add_arguments(bench)
    bench.set_defaults(handler=_bench)

    sequential = steps.add_parser(
        "sequential", help="erase 1, 2, ... concepts together: UA of each after every step"
    )
    SequentialConfig.add_arguments(sequential)
    sequential.set_defaults(handler=_sequential)

    saemnesia = steps.add_parser(
        "saemnesia", help="SAEmnesia: supervised SAEs (build)"
    )
    stages = saemnesia.add_subparsers(dest="saemnesia_command", metavar="STEP")
    stages.required = True
    build = stages.add_parser("build", help="fine-tune a supervised SAE per hookpoint")
    SupervisedBuildConfig.add_arguments(build)
    build.set_defaults(handler=_saemnesia_build)

    guided = steps.add_parser(
        "guided", help="SAEs on what the prompt adds (guidance site, text encoder): build"
    )
    guided_steps = guided.add_subparsers(dest="guided_command", metavar="STEP")
    guided_steps.required = True
    gbuild = guided_steps.add_parser("build", help="capture the guidance site, train SAEs, stats")
    GuidedBuildConfig.add_arguments(gbuild)
    gbuild.set_defaults(handler=_guided_build)
    return parser


def _train(args: argparse.Namespace) -> int:
    check_choice("part", args.part, PARTS)
    cfg = ModelTrainConfig.from_args(args)
    out = cfg.output_folder()
    from saeuron.minicanvas.classifier import train_classifier  # noqa: PLC0415
    from saeuron.minicanvas.model import train_minicanvas  # noqa: PLC0415

    if args.part in ("all", "model"):
        train_minicanvas(cfg)
    if args.part in ("all", "classifier"):
        model, accuracy = train_classifier(seed=cfg.seed)
        model.save(out / BUNDLE_CLASSIFIER_DIR)
        print(f"classifier held-out accuracy: {json.dumps(accuracy)}")
    return 0


def _assets(args: argparse.Namespace) -> int:
    cfg = AssetConfig.from_args(args)
    from saeuron.minicanvas.assets import build_assets  # noqa: PLC0415

    summary = build_assets(cfg)
    print(json.dumps(summary["heldout_fvu"], indent=2))
    return 0


def _sequential(args: argparse.Namespace) -> int:
    cfg = SequentialConfig.from_args(args)
    from saeuron.minicanvas.sequential import run_sequential  # noqa: PLC0415

    report = run_sequential(cfg)
    print(report["table"])
    print(f"in {report['seconds'] / 60:.1f} min")
    return 0


def _saemnesia_build(args: argparse.Namespace) -> int:
    cfg = SupervisedBuildConfig.from_args(args)
    from saeuron.minicanvas.saemnesia import build_supervised  # noqa: PLC0415

    summary = build_supervised(cfg)
    for hookpoint, row in summary.items():
        first, best = row["first"], row["best"]
        print(
            f"{hookpoint}: {row['epochs']} epochs in {row['seconds']:.0f} s; held-out FVU "
            f"{first['fvu']:.3f} -> {best['fvu']:.3f}, BCE {first['bce']:.3f} -> {best['bce']:.3f}"
        )
    return 0


def _guided_build(args: argparse.Namespace) -> int:
    cfg = GuidedBuildConfig.from_args(args)
    from saeuron.minicanvas.guided import build_guided  # noqa: PLC0415

    summary = build_guided(cfg)
    print(json.dumps(summary["hookpoints"], indent=2))
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = BenchConfig.from_args(args)
    from saeuron.minicanvas.bench import run_bench  # noqa: PLC0415

    report = run_bench(cfg)
    print(report["table"])
    print(f"wrote {cfg.out} in {report['seconds'] / 60:.1f} min")
    return 0
