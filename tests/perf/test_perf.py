"""``saeuron bench perf``: the runner and the benchmarks written in this package."""

from __future__ import annotations

import json
import math

import pytest

from saeuron.erasure.erase_config import RULES
from saeuron.perf.runner import PerfConfig, run_perf
from saeuron.utils.config import ConfigError


def test_unknown_benchmark_is_refused_with_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match="only: unknown benchmark 'eras'.*did you mean 'erase'"):
        PerfConfig(only=["eras"])


def test_erase_overhead_quick_run_writes_the_table(tmp_path) -> None:
    report = run_perf(PerfConfig(only=["erase"], quick=True, out=str(tmp_path)))
    rows = report["rows"]
    assert [r["what"].split(",")[0] for r in rows] == ["step time"] * 5
    for row in rows:
        assert row["ours"] > 0 and row["baseline"] > 0 and math.isfinite(row["ratio"])
    ours = [r for r in rows if r["target"]]
    assert len(ours) == 4 and all(isinstance(r["met"], bool) for r in ours)
    recipe = [r for r in rows if "recipe" in r["what"]]
    assert [r["target"] for r in recipe] == ["<= 1.03x"] * 2
    saved = json.loads((tmp_path / "perf.json").read_text())
    assert saved["rows"] == rows
    assert (tmp_path / "perf.md").read_text().count("erase overhead: ") == 4


@pytest.mark.slow
def test_compile_quick_run_reports_no_graph_break_and_the_compiled_overhead(tmp_path) -> None:
    report = run_perf(PerfConfig(only=["compile"], quick=True, device="cpu", out=str(tmp_path)))
    breaks, *rows = report["rows"]
    assert breaks["extra"]["per_rule"] == {r: 0 for r in RULES}
    assert breaks["ours"] == 0 and breaks["met"] is True
    compiled, eager = rows[: len(RULES)], rows[len(RULES) :]
    assert [r["extra"]["rule"] for r in compiled] == list(RULES) and len(eager) == len(RULES)
    for row in compiled:
        assert row["extra"]["backend"] == "aot_eager" and row["target"] == "<= 1.02x"
        assert row["ours"] > 0 and row["baseline"] > 0 and math.isfinite(row["ratio"])
        assert row["met"] == (row["ratio"] <= 1.02)
        ratios = row["extra"]["block_ratios"]
        assert len(ratios) == 2 and min(ratios) <= max(ratios)
        # What was timed erased (the edit moved the output) and compiled as eager.
        assert row["extra"]["edit_max_abs_change"] > 1e-3, row["extra"]["rule"]
        assert row["extra"]["max_abs_diff_vs_eager"] < 1e-4
    assert all(r["target"] == "" and math.isfinite(r["ratio"]) for r in eager)
    assert "graph breaks of the hooked UNet" in (tmp_path / "perf.md").read_text()


def test_feature_search_selects_what_the_seed_procedure_selects() -> None:
    from saeuron.perf.concept_features import _one

    ours, seed, same = _one("minicanvas", "moon", images=4, steps=12, read_step=3)
    assert same, "the shortcut must select the latents the published full sampling selects"
    assert ours > 0 and seed > 0
