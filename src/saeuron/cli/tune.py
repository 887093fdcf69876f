"""``saeuron tune``: search an erasure recipe for one concept on validation prompts."""

from __future__ import annotations

import argparse
import json
from typing import Any

from saeuron.eval.tune_config import TuneConfig


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Search the sites, rule, strength, latents and window that erase CONCEPT "
        "best on the prompt set's validation prompts (Optuna; resumable: run the same command "
        "again to continue, or start several to share the study), and write the best as a "
        "recipe (--out NAME.json) with its trials table (NAME.trials.csv) and a plot of UA "
        "against retention (NAME.tradeoff.png). On a bundled model (minicanvas) the bundle "
        "supplies SAEs, statistics, prompt set and judge. Test seeds, test phrasings and "
        "test-only names are refused.",
    )
    TuneConfig.add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    config = TuneConfig.from_args(args)
    # The tuner loads torch and a model: imported once the settings are checked.
    from saeuron.eval.tuning import run_tune  # noqa: PLC0415

    summary = run_tune(config)
    scores = summary["scores"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if isinstance(v, float))
    print(f"best of {summary['trials']} trials ({summary['ran']} run now, "
          f"{summary['seconds']} s): {json.dumps(summary['best'])}")  # fmt: skip
    print(f"  {shown}")
    print(f"wrote {summary['recipe']}")
    return 0
