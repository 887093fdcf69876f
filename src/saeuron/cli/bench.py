"""``saeuron bench perf``: what erasing, feature search, training and capture cost.
``saeuron bench blocks``: which block of a denoiser to put the SAE on."""

from __future__ import annotations

import argparse
from typing import Any

from saeuron.perf.blocks import BlockSweepConfig, sweep_blocks
from saeuron.perf.runner import PerfConfig, run_perf


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Benchmarks that print measured numbers, each against a baseline "
        "measured in the same run.",
    )
    what = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    what.required = True
    perf = what.add_parser(
        "perf", help="erase overhead, feature search, SAE training, capture, profile"
    )
    PerfConfig.add_arguments(perf)
    perf.set_defaults(handler=run)
    blocks = what.add_parser(
        "blocks",
        help="capture, train, find features and erase at each block; rank the blocks",
        description="For each block: capture, train a small SAE, find a concept's features "
        "and erase it from held-out prompts; blocks are ranked by the pixel change on the "
        "concept's images over the change on neutral images.",
    )
    BlockSweepConfig.add_arguments(blocks)
    blocks.set_defaults(handler=run_blocks)
    return parser


def run_blocks(args: argparse.Namespace) -> int:
    result = sweep_blocks(BlockSweepConfig.from_args(args))
    print(result["table"], end="")
    return 0


def run(args: argparse.Namespace) -> int:
    result = run_perf(PerfConfig.from_args(args))
    print(result["table"], end="")
    return 0
