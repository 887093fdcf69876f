"""What a normal run prints: no third-party warnings, and one progress bar per job."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import saeuron

NOISE = re.compile(
    r"warn|deprecat|expected types|config attributes|\[transformers\]|\[diffusers\]|traceback",
    re.IGNORECASE,
)
BAR = re.compile(r"^([\w ]+):\s+\d+%\|")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(saeuron.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "saeuron", *args],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
    )  # fmt: skip


def lines(stderr: str) -> list[str]:
    return [line.strip() for line in re.split(r"[\r\n]+", stderr) if line.strip()]


def check_quiet(result: subprocess.CompletedProcess, bar: str) -> None:
    assert result.returncode == 0, result.stderr
    err = lines(result.stderr)
    assert not [line for line in err if NOISE.search(line)], result.stderr
    bars = {m.group(1) for line in err if (m := BAR.match(line))}
    assert bars == {bar}, err
    others = [line for line in err if not BAR.match(line)]
    assert all(line.startswith("INFO saeuron") for line in others), others


# A fresh interpreter that loads and samples a model (14 s): in the long tier.
@pytest.mark.slow
def test_generate_prints_no_warnings_and_one_sampling_bar(tmp_path) -> None:
    result = run_cli("generate", "--model", "minicanvas", "--erase", "moon,checkered",
                     "--prompt", "An image of moon in checkered style.", "--out", "a.png",
                     "--num-inference-steps", "4", "--side-by-side", cwd=tmp_path)  # fmt: skip
    check_quiet(result, "sampling")
    assert result.stdout.strip() == "wrote a.png" and (tmp_path / "a.png").is_file()
    assert "8/8" in result.stderr  # both images' steps on the one bar


@pytest.mark.slow
def test_demo_prints_no_warnings_and_one_bar(tmp_path) -> None:
    result = run_cli("demo", "--out", "demo.png", "--steps", "2", "--retain", "2", cwd=tmp_path)
    check_quiet(result, "demo")
    assert "erase 'moon'" in result.stdout and (tmp_path / "demo.png").is_file()
