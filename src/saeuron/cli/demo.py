"""``saeuron demo``: erase an object and a style from MiniCanvas; a before/after grid."""

from __future__ import annotations

import argparse
from typing import Any

from saeuron.minicanvas.demo_config import DemoConfig


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Erase one object and one style from the bundled MiniCanvas model, write a "
        "before/after grid and print unlearning (UA) and retention (IRA, CRA) accuracy judged "
        "by the bundled classifier.",
    )
    DemoConfig.add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # The demo loads torch and the model: imported when the command runs, not for --help.
    from saeuron.minicanvas.demo import run_demo, settings_text  # noqa: PLC0415

    cfg = DemoConfig.from_args(args)
    rows, seconds = run_demo(cfg)
    for row in rows:
        b, a = row.scores_before, row.scores_after
        print(
            f"erase {row.concept!r} ({settings_text(row.params)}): "
            f"UA {b['UA']:.2f} -> {a['UA']:.2f}, "
            f"IRA {b['IRA']:.2f} -> {a['IRA']:.2f}, CRA {b['CRA']:.2f} -> {a['CRA']:.2f}"
        )
    print(f"wrote {cfg.out} in {seconds:.1f} s")
    return 0
