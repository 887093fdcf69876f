"""scripts/gpu_check.py runs on the CPU too: the checks a CPU can run pass, the CUDA-only
ones skip and say why, and the summary is one JSON document."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


@pytest.mark.slow
def test_gpu_check_runs_on_the_cpu_and_skips_what_needs_cuda() -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(SCRIPT), "--device", "cpu", "--quick"], env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip
    summary = json.loads(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:]
    checks = summary["checks"]
    assert summary["ok"] is True and summary["device"] == "cpu"
    skipped = {name for name, c in checks.items() if c["status"] == "skip"}
    assert skipped >= {"sequential CPU offload", "dense path without host sync"}
    assert all(checks[name]["reason"] for name in skipped)
    assert checks["fp32 erasure"]["status"] == "pass"
    assert checks["fp32 erasure"]["edited_tokens"] > 0
    assert checks["model CPU offload"]["max_abs_diff_vs_on_device"] <= 1e-4
    assert checks["graph breaks on the dense path"]["graph_breaks"] == 0
    assert set(checks["graph breaks on the dense path"]["per_rule"]) == {
        "scale", "ablate", "anchor", "project"}
    assert checks["torch.compile erases as eager, one graph"]["unique_graphs"] == 1
    overhead = checks["erase overhead, eager and compiled"]
    rows = [v for k, v in overhead.items() if k.startswith("UNet call compiled")]
    # One row per rule, each a measured ratio.
    assert len(rows) == 4 and all(row["ratio"] > 0 for row in rows)
    assert {k.split("rule ")[1].split(",")[0] for k in overhead if "compiled" in k} == {
        "scale", "ablate", "anchor", "project"}


@pytest.mark.slow
def test_gpu_check_fails_with_a_summary_when_cuda_is_missing() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: the script would run its checks")
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run([str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    assert json.loads(done.stdout) == {"device": "cuda", "ok": False,
                                       "error": "CUDA is not available"}  # fmt: skip
