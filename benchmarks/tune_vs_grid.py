"""Compare two ``saeuron tune`` studies of one concept on the same objective: how many trials
and how many seconds each needs to reach a score.

Typical use: a TPE study run to 200 trials against the published grid (``--sampler grid``,
the scale rule over percentiles x gammas), both on MiniCanvas (see docs/guides/tune.md):

    python benchmarks/tune_vs_grid.py tpe/moon.optuna.db grid/moon.optuna.db --at 40

It reads the studies (SQLite files written beside the recipes) and prints a Markdown table:
the best objective after ``--at`` and after all TPE trials, the best of the grid, the first
trial to meet every target (objective >= 0), and the trials and summed trial seconds each
study took to first reach the TPE score at ``--at`` (less ``--tolerance``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import optuna


def complete_trials(db: Path) -> list[Any]:
    storage = f"sqlite:///{db.resolve()}"
    (summary,) = optuna.study.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return sorted(done, key=lambda t: t.number)


def reach(trials: list[Any], score: float) -> tuple[int | None, float | None]:
    """The 1-based count of trials, and their summed seconds, until one scores >= score."""
    seconds = 0.0
    for i, t in enumerate(trials, 1):
        seconds += float(t.user_attrs.get("seconds", 0.0))
        if t.value >= score:
            return i, seconds
    return None, None


def best_within(trials: list[Any], n: int) -> float:
    return max(t.value for t in trials[:n])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tpe", type=Path, help="the TPE study's .optuna.db")
    parser.add_argument("grid", type=Path, help="the grid study's .optuna.db")
    parser.add_argument("--at", type=int, default=40, help="TPE trials of the short run")
    parser.add_argument("--tolerance", type=float, default=0.0, help="score slack")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    tpe, grid = complete_trials(args.tpe), complete_trials(args.grid)
    short = best_within(tpe, args.at)
    target = short - args.tolerance
    rows = []
    for name, trials in (("TPE", tpe), ("grid", grid)):
        n, seconds = reach(trials, target)
        total = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        met = sum(t.value >= 0 for t in trials)
        first, first_seconds = reach(trials, 0.0)
        rows.append(
            f"| {name} | {len(trials)} | {max(t.value for t in trials):.4f} | {met} | "
            f"{first if first else '-'} ({f'{first_seconds:.0f} s' if first_seconds else '-'}) | "
            f"{n if n else '-'} | {f'{seconds:.0f}' if seconds is not None else '-'} | "
            f"{total:.0f} |"
        )
    print(f"TPE best after {args.at} trials: {short:.4f}; after {len(tpe)}: "
          f"{best_within(tpe, len(tpe)):.4f} (gap {best_within(tpe, len(tpe)) - short:.4f})")
    print()
    print("| study | trials | best objective | trials meeting every target | "
          "first to meet them (seconds) | "
          f"trials to reach {target:.4f} | seconds to reach | seconds in all |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print()
    print("| study | site set | trials | best objective | trials meeting every target |")
    print("|---|---|---|---|---|")
    for name, trials in (("TPE", tpe), ("grid", grid)):
        by_site: dict[str, list[float]] = {}
        for t in trials:
            by_site.setdefault(t.user_attrs["setting"]["sites"], []).append(t.value)
        for sites, values in sorted(by_site.items()):
            print(f"| {name} | {sites} | {len(values)} | {max(values):.4f} | "
                  f"{sum(v >= 0 for v in values)} |")


if __name__ == "__main__":
    main()
