"""The eval runner with a stand-in technique: resume, refusal, failing scorers, processes."""

from __future__ import annotations

import csv
import json

import pytest
from helpers.evaluation import (
    ColourTechnique,
    config,
    ua_ira_config,
)

from saeuron.eval import parse_eval_config, run_eval
from saeuron.eval.metrics import METRICS
from saeuron.utils.config import ConfigError


def test_ua_ira_is_right_for_50_target_and_20_retain_prompts(tmp_path, colour) -> None:
    # eval-unlearn's defect 1: with 50 target + 20 retain prompts its IRA came out 0.
    report = run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    values = report["metrics"]["ua_ira"]["values"]
    assert values == {"UA": 0.0, "IRA": 1.0}  # unchanged model: nudity stays, people stay
    with open(tmp_path / "run" / "ua_ira" / "images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 70 and rows[0]["judged"] == "nudity" and rows[-1]["judged"] == "person"
    assert {r["group"] for r in rows[:50]} == {"target"} and rows[0]["seed"] == "1000"
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert "| ua_ira | IRA | 1 |" in summary


def test_killed_run_resumes_without_resampling_and_ends_the_same(tmp_path, colour) -> None:
    fresh = run_eval(parse_eval_config(ua_ira_config(tmp_path, "fresh")))
    calls_fresh = ColourTechnique.calls
    assert calls_fresh == 9  # 70 images in chunks of 8

    ColourTechnique.calls = 0
    colour.fail_after = 4
    cfg = parse_eval_config(ua_ira_config(tmp_path, "killed"))
    with pytest.raises(KeyboardInterrupt):
        run_eval(cfg)
    images = sorted((tmp_path / "killed" / "ua_ira" / "images").glob("*.png"))
    assert len(images) == 32 and not list((tmp_path / "killed").rglob("*.tmp"))
    assert not (tmp_path / "killed" / "report.json").exists()

    ColourTechnique.calls = 0
    colour.fail_after = None
    resumed = run_eval(cfg)
    assert ColourTechnique.calls == 5  # only the 5 chunks it had not finished
    assert resumed["metrics"] == fresh["metrics"]
    for a, b in zip(images, sorted((tmp_path / "fresh" / "ua_ira" / "images").glob("*.png"))):
        assert a.read_bytes() == b.read_bytes()
    # A finished run started again samples nothing.
    ColourTechnique.calls = 0
    assert run_eval(cfg)["metrics"] == fresh["metrics"] and ColourTechnique.calls == 0


def test_output_dir_of_another_config_is_refused_naming_each_key(tmp_path, colour) -> None:
    run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    other = ua_ira_config(tmp_path)
    other["seed"] = 5
    other["technique"]["config"]["guidance_scale"] = 3.0
    with pytest.raises(ConfigError) as err:
        run_eval(parse_eval_config(other))
    message = str(err.value)
    assert message.startswith("output_dir: ") and "holds images of other settings" in message
    assert "seed: 0 in the folder, 5 now" in message
    assert "technique.config.guidance_scale: 7.5 in the folder, 3.0 now" in message


def test_device_and_batch_size_do_not_lock_a_folder(tmp_path, colour) -> None:
    first = run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    again = ua_ira_config(tmp_path)
    again["technique"]["config"].update(batch_size=3, device="cpu")
    ColourTechnique.calls = 0
    assert run_eval(parse_eval_config(again))["metrics"] == first["metrics"]
    assert ColourTechnique.calls == 0  # every image reused


def test_a_metric_scoring_setting_does_not_lock_its_images(tmp_path, colour) -> None:
    run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    again = ua_ira_config(tmp_path)
    again["metric"]["config"]["device"] = "cpu"
    ColourTechnique.calls = 0
    run_eval(parse_eval_config(again))
    assert ColourTechnique.calls == 0
    fewer = ua_ira_config(tmp_path)
    fewer["metric"]["config"]["limit"] = 10
    with pytest.raises(ConfigError, match="other prompts or seeds .*limit: None in the folder"):
        run_eval(parse_eval_config(fewer))


def test_a_run_that_produced_nothing_does_not_lock_the_folder(tmp_path, colour) -> None:
    colour.fail_after = 0  # killed before its first image
    with pytest.raises(KeyboardInterrupt):
        run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    assert (tmp_path / "run" / "run.json").is_file()
    assert not list((tmp_path / "run").rglob("*.png"))
    colour.fail_after = None
    corrected = ua_ira_config(tmp_path)
    corrected["seed"] = 7
    report = run_eval(parse_eval_config(corrected))
    assert report["config"]["seed"] == 7 and report["metrics"]["ua_ira"]["images"] == 70
    stored = json.loads((tmp_path / "run" / "run.json").read_text())
    assert stored["seed"] == 7 and "device" not in stored["technique"]["config"]


def test_degenerate_images_are_never_counted_as_erased(tmp_path, colour, monkeypatch) -> None:
    # Black images for every target prompt: a detector would call each erased (UA 1.0).
    from PIL import Image

    def black_targets(self, prompts, seeds):
        images = ColourTechnique._draw(self, prompts, seeds)
        return [
            Image.new("RGB", im.size) if any(w in p for w in ("nude", "naked")) else im
            for p, im in zip(prompts, images)
        ]

    monkeypatch.setattr(ColourTechnique, "generate", black_targets)
    report = run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    result = report["metrics"]["ua_ira"]
    with open(tmp_path / "run" / "ua_ira" / "images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    flagged = [r for r in rows if r["degenerate"]]
    assert result["degenerate"] == len(flagged) > 0
    assert {r["degenerate"] for r in flagged} == {"black"}
    assert all(r["target_gone"] == "0.0" for r in flagged)
    assert result["values"]["UA"] == 0.0  # as without the black images: none erased
    summary = (tmp_path / "run" / "summary.md").read_text()
    assert f"ua_ira: {len(flagged)} of 70 images degenerate" in summary


def test_a_failing_scorer_stops_the_run_and_counts_nothing(tmp_path, colour, monkeypatch) -> None:
    def broken(self, images, items, unerased):
        raise RuntimeError("detector crashed")

    monkeypatch.setattr(METRICS.get("ua_ira"), "score", broken)
    with pytest.raises(RuntimeError, match="detector crashed"):
        run_eval(parse_eval_config(ua_ira_config(tmp_path)))
    assert not (tmp_path / "run" / "report.json").exists()


def test_unloadable_model_skips_the_metric_with_its_name(tmp_path, colour) -> None:
    data = ua_ira_config(tmp_path)
    data["metrics"] = [
        {"name": "clip_score", "config": {"limit": 4, "clip_model": str(tmp_path / "no-clip")}},
        data.pop("metric"),
    ]
    report = run_eval(parse_eval_config(data))
    assert "no-clip" in report["metrics"]["clip_score"]["skipped"]
    assert report["metrics"]["ua_ira"]["values"]["IRA"] == 1.0
    assert not (tmp_path / "run" / "clip_score" / "images").exists()  # nothing sampled for it
    assert "skipped" in (tmp_path / "run" / "summary.md").read_text()


@pytest.mark.slow
def test_accelerate_launch_two_cpu_processes_split_the_images(tmp_path) -> None:
    import os
    import subprocess
    import sys

    metric = [{"name": "preservation", "config": {"limit": 8}}]
    data = config(tmp_path, metric, name="saeuron", num_inference_steps=4, batch_size=2)
    data["output_dir"] = str(tmp_path / "two")
    (tmp_path / "cfg.json").write_text(json.dumps(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "saeuron", "-v", "eval", "-c", str(tmp_path / "cfg.json"),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout + result.stderr
    # 8 prompts, erased and unerased, in chunks of 2: 4 chunks of each for each process.
    assert "process 0/2 sampled 8 images" in log and "process 1/2 sampled 8 images" in log
    two = json.loads((tmp_path / "two" / "report.json").read_text())["metrics"]["preservation"]
    assert two["images"] == 8

    data["output_dir"] = str(tmp_path / "one")
    one = run_eval(parse_eval_config(data))["metrics"]["preservation"]
    for key, value in one["values"].items():
        assert two["values"][key] == pytest.approx(value, rel=1e-3, abs=1e-3)
