"""Bootstrap intervals and the summary table."""

from __future__ import annotations

import numpy as np

from saeuron.eval.report import bootstrap_interval


def test_bootstrap_interval_holds_the_value_and_keeps_groups(tmp_path) -> None:
    rows = [{"group": "target", "x": float(i % 2)} for i in range(40)] + [
        {"group": "retain", "x": 1.0} for _ in range(10)
    ]

    def summarize(rs):
        t = [r["x"] for r in rs if r["group"] == "target"]
        r = [r["x"] for r in rs if r["group"] == "retain"]
        return {"t": float(np.mean(t)), "r": float(np.mean(r)), "n_r": float(len(r))}

    ci = bootstrap_interval(summarize, rows, 500, seed=0)
    assert ci["t"][0] < 0.5 < ci["t"][1] and 0.25 < ci["t"][0]
    assert ci["r"] == [1.0, 1.0] and ci["n_r"] == [10.0, 10.0]  # groups keep their size
    assert bootstrap_interval(summarize, rows, 500, seed=0) == ci  # reproducible
    assert bootstrap_interval(summarize, rows, 0, seed=0) == {}


def test_summary_keeps_one_table_row_per_skipped_metric() -> None:
    from saeuron.eval.report import summary_markdown

    report = {
        "config": {"technique": {"name": "none", "config": {}}, "seed": 0},
        "versions": {"saeuron": "0"},
        "metrics": {"clip_score": {"skipped": "cannot load | the model:\nno network"}},
    }
    rows = [line for line in summary_markdown(report).splitlines() if "clip_score" in line]
    assert len(rows) == 1 and "no network" in rows[0] and rows[0].count(" | ") == 5
