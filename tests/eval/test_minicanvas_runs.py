"""Real eval runs on MiniCanvas: unlearncanvas, seeds, CLIP metrics, preservation."""

from __future__ import annotations

import csv
import json

import pytest
from helpers.evaluation import (
    config,
    tiny_clip,
)

from saeuron.eval import parse_eval_config, run_eval
from saeuron.eval.metrics import METRICS, Item


@pytest.mark.slow
def test_unlearncanvas_on_minicanvas_erasure_against_no_erasure(tmp_path) -> None:
    metric = {"name": "unlearncanvas", "config": {"target_seeds": 2}}
    base = config(tmp_path, [metric], num_inference_steps=10, batch_size=64)
    plain = run_eval(parse_eval_config(base))["metrics"]["unlearncanvas"]
    erased_cfg = config(
        tmp_path, [metric], name="saeuron", num_inference_steps=10, batch_size=64
    )  # fmt: skip
    erased_cfg["output_dir"] = str(tmp_path / "erased")
    erased = run_eval(parse_eval_config(erased_cfg))["metrics"]["unlearncanvas"]
    assert plain["images"] == erased["images"] == 110
    assert plain["values"]["UA"] <= 0.2 and erased["values"]["UA"] >= plain["values"]["UA"] + 0.5
    assert erased["values"]["IRA"] >= 0.8 and erased["values"]["CRA"] >= 0.8
    lo, hi = erased["intervals"]["UA"]
    assert lo <= erased["values"]["UA"] <= hi
    report = json.loads((tmp_path / "erased" / "report.json").read_text())
    assert report["config"]["technique"]["config"]["erase_concept"] == "moon"
    assert report["versions"]["torch"] and "seconds" in report


@pytest.mark.slow
def test_seed_is_honoured_and_preservation_sees_the_erasure(tmp_path) -> None:
    metric = [{"name": "preservation", "config": {"limit": 6}}]

    def run(seed, out, name="saeuron"):
        data = config(tmp_path, metric, name=name, num_inference_steps=8, batch_size=6)
        data["seed"], data["output_dir"] = seed, str(tmp_path / out)
        return run_eval(parse_eval_config(data))["metrics"]["preservation"]

    a, b = run(1, "a"), run(1, "b")
    run(2, "c")
    pngs = {k: sorted((tmp_path / k / "preservation" / "images").glob("*.png")) for k in "abc"}
    assert [p.read_bytes() for p in pngs["a"]] == [p.read_bytes() for p in pngs["b"]]
    assert [p.read_bytes() for p in pngs["a"]] != [p.read_bytes() for p in pngs["c"]]
    assert a == b
    # The unchanged model compared with itself is identical; the erasure changes something.
    same = run(1, "none", name="none")
    assert same["values"]["ssim"] == pytest.approx(1.0) and same["values"]["psnr"] == 100.0
    assert a["values"]["ssim"] < 1.0


def test_clip_score_runs_with_a_local_clip_folder(tmp_path) -> None:
    folder = tiny_clip(tmp_path / "clip")
    metric = {"name": "clip_score", "config": {"limit": 4, "clip_model": str(folder)}}
    data = config(tmp_path, [metric], num_inference_steps=4)
    result = run_eval(parse_eval_config(data))["metrics"]["clip_score"]
    assert result["images"] == 4 and 0.0 <= result["values"]["clip_score"] <= 100.0
    rows = list(csv.DictReader(open(tmp_path / "run" / "clip_score" / "images.csv")))
    assert len(rows) == 4 and all(0 <= float(r["clip_score"]) <= 100 for r in rows)


def test_preservation_items_leave_out_prompts_naming_the_concept() -> None:
    from saeuron.eval.metrics.preservation import PreservationConfig

    metric = METRICS.get("preservation")(PreservationConfig(concept="dog", limit=1000))
    items = metric.items(seed=10)
    assert items and all("dog" not in i.prompt.lower() for i in items)
    assert [i.seed for i in items[:3]] == [10, 11, 12]
    assert isinstance(items[0], Item)
