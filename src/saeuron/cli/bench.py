"""``saeuron bench perf``: what erasing, feature search, training and capture cost."""

from __future__ import annotations

import argparse
from typing import Any

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
    return parser


def run(args: argparse.Namespace) -> int:
    result = run_perf(PerfConfig.from_args(args))
    print(result["table"], end="")
    return 0
