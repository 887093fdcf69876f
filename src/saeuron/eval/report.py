"""What a run reports: bootstrap intervals, provenance, the per-image table and the summary."""

from __future__ import annotations

import csv
import importlib.metadata
import math
import platform
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.utils.io import atomic_path


def bootstrap_interval(
    summarize: Callable[[Sequence[dict[str, Any]]], dict[str, float]],
    rows: Sequence[dict[str, Any]],
    resamples: int,
    seed: int,
) -> dict[str, list[float] | None]:
    """95 % percentile intervals of every value, resampling rows within their ``group``.

    Groups (target / retain, ...) keep their sizes, so a value that compares groups is
    never computed on a resample that lost one of them.
    """
    if resamples <= 0 or not rows:
        return {}
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(str(row.get("group", "all")), []).append(i)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        picked: list[int] = []
        for members in groups.values():
            picked.extend(rng.choice(members, size=len(members), replace=True).tolist())
        for key, value in summarize([rows[i] for i in picked]).items():
            draws.setdefault(key, []).append(value)
    out: dict[str, list[float] | None] = {}
    for key, values in draws.items():
        finite = np.array([v for v in values if not math.isnan(v)])
        out[key] = (
            [float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))]
            if len(finite)
            else None
        )
    return out


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("saeuron", "torch", "diffusers", "transformers", "numpy"):
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    return found


def git_hash() -> str | None:
    """The commit of the saeuron source tree, when it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def write_table(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """The per-image CSV; columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def summary_markdown(report: dict[str, Any]) -> str:
    tech = report["config"]["technique"]
    lines = [
        f"# saeuron eval: {tech['name']}",
        "",
        f"Technique config: `{tech['config']}`  ",
        f"Seed {report['config']['seed']}; saeuron {report['versions'].get('saeuron')}, "
        f"git {report.get('git') or 'unknown'}.",
        "",
        "| metric | value | result | 95 % interval | better | images |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in report["metrics"].items():
        if result.get("skipped"):
            reason = " ".join(str(result["skipped"]).split()).replace("|", "\\|")
            lines.append(f"| {label} | - | skipped: {reason} | - | - | - |")
            continue
        for key, value in result["values"].items():
            ci = result["intervals"].get(key)
            interval = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "-"
            better = "higher" if result["higher_is_better"].get(key, True) else "lower"
            lines.append(
                f"| {label} | {key} | {_fmt(value)} | {interval} | {better} | {result['images']} |"
            )
    degenerate = [
        f"- {label}: {r['degenerate']} of {r['images']} images degenerate (black or one flat "
        "colour), each counted as a failure of the technique"
        for label, r in report["metrics"].items()
        if r.get("degenerate")
    ]
    if degenerate:
        lines += ["", "Images with no picture in them:", *degenerate]
    budgets = [
        f"- {label}: {d['budget']} budget ("
        + ", ".join(f"{k} {v}" for k, v in d.get("resolved", {}).items())
        + ")"
        for label, d in ((k, r.get("details") or {}) for k, r in report["metrics"].items())
        if "budget" in d
    ]
    if budgets:
        lines += ["", "Attack budgets (published: the attack papers' own settings):", *budgets]
    return "\n".join(lines) + "\n"
