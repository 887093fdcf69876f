"""fid and kid: the closed form, MiniCanvas references, hub datasets."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from helpers.evaluation import (
    config,
    ua_ira_config,
)
from PIL import Image

from saeuron.eval import parse_eval_config, run_eval
from saeuron.eval.metrics import METRICS
from saeuron.utils.config import ConfigError


def test_frechet_distance_matches_the_closed_form() -> None:
    from saeuron.eval.inception import frechet_distance, kernel_inception_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = 2 * a + 3  # S_b = 4 S_a: (S_a S_b)^1/2 = 2 S_a, FID = |mu_a + 3|^2 + Tr(S_a)
    s_a = np.cov(a, rowvar=False)
    want = ((a.mean(0) + 3) ** 2).sum() + np.trace(s_a)
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    same = kernel_inception_distance(a, a.copy(), subsets=10, subset_size=100)
    moved = kernel_inception_distance(a, b, subsets=10, subset_size=100)
    assert abs(same) < 0.05 * moved and moved > 0


@pytest.mark.slow
def test_fid_on_minicanvas_with_procedural_references(tmp_path) -> None:
    metric = [{"name": "fid", "config": {"limit": 40, "kid_subsets": 20}}]
    data = config(tmp_path, metric, num_inference_steps=10, batch_size=40)
    cfg = parse_eval_config(data)
    assert cfg.metrics[0].config.reference == "minicanvas"  # from the technique's model
    result = run_eval(cfg)["metrics"]["fid"]
    assert result["images"] == 40 and result["intervals"] == {}
    assert np.isfinite(result["values"]["fid"]) and result["values"]["fid"] > 0
    assert np.isfinite(result["values"]["kid"])
    rows = list(csv.DictReader(open(tmp_path / "run" / "fid" / "images.csv")))
    assert len(rows) == 40 and float(rows[0]["feature_norm"]) > 0
    # Against references of another world (uniform noise) the distance is far larger.
    noise = tmp_path / "noise"
    noise.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise / f"{i}.png")
    data["output_dir"] = str(tmp_path / "vs-noise")
    data["metrics"][0]["config"]["reference"] = str(noise)
    far = run_eval(parse_eval_config(data))["metrics"]["fid"]["values"]["fid"]
    assert far > 1.3 * result["values"]["fid"]  # 435 against 246 when measured


def test_fid_without_references_for_other_models_is_named_missing(tmp_path, colour) -> None:
    data = ua_ira_config(tmp_path)
    data["metric"] = {"name": "fid", "config": {"limit": 4}}
    cfg = parse_eval_config(data)
    report = run_eval(cfg)
    assert "set reference to a folder of real images" in report["metrics"]["fid"]["skipped"]


def test_fid_reads_references_from_a_hub_dataset(tmp_path, monkeypatch) -> None:
    import saeuron.eval.metrics.fid as fid_module

    snapshot = tmp_path / "snapshot" / "val"
    snapshot.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i * 80, 0, 0)).save(snapshot / f"{i}.jpg")
    calls = []

    def fake(repo, repo_type, allow_patterns):
        calls.append((repo, repo_type))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(fid_module, "snapshot_download", fake)
    from saeuron.eval.metrics.fid import FidConfig

    metric = METRICS.get("fid")(FidConfig(reference="hf:someone/coco-val", limit=2))
    images = metric._reference_images()
    assert calls == [("someone/coco-val", "dataset")] and len(images) == 2
    with pytest.raises(ConfigError, match="hf:owner/dataset"):
        FidConfig(reference="no-such-folder")
