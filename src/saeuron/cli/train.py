"""``saeuron train``: an SAE on a capture folder, or SAEmnesia's supervised fine-tune."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from saeuron.cli.main import DeprecatedFlag
from saeuron.training.supervised_config import SupervisedTrainConfig
from saeuron.training.train_config import TrainConfig
from saeuron.utils.atomic import check_output_folder
from saeuron.utils.config import ConfigError

logger = logging.getLogger(__name__)

# SaeConfig keys that are no flag of train, as they would change nothing: multi_topk and
# sample_topk are sparsify cfg.json keys kept so that published SAEs round-trip (no saeuron
# trainer implements them), and the trainer sets batch_topk from --topk. Their old flags stay
# for one release, hidden, with a warning (old flag -> its replacement, None: none).
NOT_FLAGS = ("multi_topk", "sample_topk", "batch_topk")
OLD_FLAGS: dict[str, str | None] = {"multi-topk": None, "sample-topk": None, "batch-topk": "--topk"}


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Train a BatchTopK SAE on a `saeuron capture` folder; writes OUT/<hookpoint>/.",
    )
    TrainConfig.add_arguments(parser, skip=NOT_FLAGS)
    for old, new in OLD_FLAGS.items():
        parser.add_argument(
            f"--{old}",
            f"--no-{old}",
            dest=f"deprecated_{old.replace('-', '_')}",  # read by nothing
            nargs=0,
            action=DeprecatedFlag,
            new=new,
        )
    supervised = parser.add_argument_group(
        "supervised (SAEmnesia)",
        "--supervised fine-tunes an SAE so that each labelled concept has one latent; "
        "without --init-sae an unsupervised SAE is trained first (to OUT/unsupervised/)",
    )
    supervised.add_argument(
        "--supervised", action="store_true", help="SAEmnesia's supervised fine-tune"
    )
    SupervisedTrainConfig.add_arguments(
        supervised, skip=("activations", "out", "seed", "device", "init_sae"), require=False
    )
    supervised.add_argument(
        "--init-sae",
        dest="init_sae",
        metavar="SAE",
        help="unsupervised SAE to start from; default: train one first",
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # Training loads torch: imported when the command runs, not for --help.
    from saeuron.training.trainer import Trainer  # noqa: PLC0415

    check_output_folder(args.out, "out")
    if args.supervised:
        return run_supervised(args)
    if args.labels or args.init_sae:
        raise ConfigError("supervised", "--labels and --init-sae only apply with --supervised")
    trainer = Trainer(TrainConfig.from_args(args))
    trainer.train()
    if trainer.procs.is_main:
        print(f"SAE written to {trainer.out_dir}")
    return 0


def run_supervised(args: argparse.Namespace) -> int:
    # Training loads torch: imported when the command runs, not for --help.
    from saeuron.training.distributed import launched_processes  # noqa: PLC0415
    from saeuron.training.shards import ActivationShards  # noqa: PLC0415
    from saeuron.training.supervised import read_labels, train_supervised  # noqa: PLC0415
    from saeuron.training.trainer import Trainer  # noqa: PLC0415

    if not args.labels:
        raise ConfigError("labels", "--supervised needs --labels CSV (one row per prompt)")
    if launched_processes() > 1:
        raise ConfigError("supervised", "runs as one process: start it without accelerate launch")
    init = args.init_sae or str(Path(args.out) / "unsupervised")
    # Everything is checked (labels against the capture included) before any training.
    sup = SupervisedTrainConfig.from_args(args, init_sae=init)
    manifest = ActivationShards(sup.activations).manifest
    read_labels(sup.labels, int(manifest["n_prompts"]), manifest.get("prompts_sha256"))
    if not args.init_sae:
        Trainer(TrainConfig.from_args(args, out=init)).train()
    _, folder = train_supervised(sup)
    print(f"supervised SAE and one feature per concept written to {folder}")
    return 0
