"""``saeuron bench perf``: what erasing, feature search, training and capture cost.
``saeuron bench blocks``: which block of a denoiser to put the SAE on.

Each action's config lives in a module that imports torch, so only the action named on the
command line is built: ``saeuron bench --help`` lists the actions without importing either.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any


def _add_perf(parser: argparse.ArgumentParser) -> None:
    from saeuron.perf.runner import PerfConfig

    PerfConfig.add_arguments(parser)
    parser.set_defaults(handler=run)


def _add_blocks(parser: argparse.ArgumentParser) -> None:
    from saeuron.perf.blocks import BlockSweepConfig

    BlockSweepConfig.add_arguments(parser)
    parser.set_defaults(handler=run_blocks)


# action -> (help, description or None, what adds its arguments)
ACTIONS: dict[str, tuple[str, str | None, Callable[[argparse.ArgumentParser], None]]] = {
    "perf": ("erase overhead, feature search, SAE training, capture, profile", None, _add_perf),
    "blocks": (
        "capture, train, find features and erase at each block; rank the blocks",
        "For each block: capture, train a small SAE, find a concept's features and erase it "
        "from held-out prompts; blocks are ranked by the pixel change on the concept's images "
        "over the change on neutral images.",
        _add_blocks,
    ),
}


def add_parser(
    sub: Any, name: str, help_text: str, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """``argv`` (the words after ``bench``): build only the action it names; None: all."""
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Benchmarks that print measured numbers, each against a baseline "
        "measured in the same run.",
    )
    what = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    what.required = True
    named = None if argv is None else next((w for w in argv if w in ACTIONS), "")
    for action, (action_help, description, add_arguments) in ACTIONS.items():
        if named is None or action == named:
            action_parser = what.add_parser(action, help=action_help, description=description)
            add_arguments(action_parser)
        else:
            what.add_parser(action, help=action_help, add_help=False)
    return parser


def run_blocks(args: argparse.Namespace) -> int:
    from saeuron.perf.blocks import BlockSweepConfig, sweep_blocks

    result = sweep_blocks(BlockSweepConfig.from_args(args))
    print(result["table"], end="")
    return 0


def run(args: argparse.Namespace) -> int:
    from saeuron.perf.runner import PerfConfig, run_perf

    result = run_perf(PerfConfig.from_args(args))
    print(result["table"], end="")
    return 0
