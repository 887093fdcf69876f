"""The shipped MiniCanvas model, classifier, SAEs and features, used for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from saeuron.models.bundles import find_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.utils.config import ConfigError

FOLDER = find_bundle("minicanvas").folder


@pytest.fixture(scope="module", autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_bundle_is_complete_and_small() -> None:
    files = [p for p in FOLDER.rglob("*") if p.is_file()]
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    model_mb = (
        sum(
            p.stat().st_size
            for p in files
            if p.parts[len(FOLDER.parts)] in ("unet", "vae", "text_encoder")
        )
        / 2**20
    )
    assert model_mb <= 30, model_mb
    assert (FOLDER / "classifier" / "classifier.safetensors").stat().st_size <= 5 * 2**20
    for hookpoint in ("unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"):
        assert (FOLDER / "saes" / hookpoint / "sae.safetensors").is_file()
        assert len(list((FOLDER / "features" / hookpoint).glob("*.safetensors"))) == 10
    # What a wheel carries: the statistics, sweeps and logs that pyproject keeps out of the
    # package are in the repository only.
    kept_out = ("stats", "sweep.json", "build.json", "assets.json", "train_log.json")
    shipped = [
        p for p in files
        if not (p.name in kept_out or p.relative_to(FOLDER).parts[0] in kept_out)
    ]  # fmt: skip
    shipped_mb = sum(p.stat().st_size for p in shipped) / 2**20
    assert shipped_mb < 45, shipped_mb
    assert size_mb < 55, size_mb


@pytest.mark.slow
def test_the_wheel_leaves_out_what_pyproject_keeps_out_and_keeps_what_runs(tmp_path) -> None:
    # Built from a copy: setuptools reuses a build/ folder it finds, stale files included.
    root = Path(__file__).resolve().parents[2]
    source = tmp_path / "source"
    shutil.copytree(root / "src", source / "src",
                    ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(root / name, source / name)
    # An egg-info left by an older build lists every file, and setuptools adds what it lists
    # to the folder's own (namespace) package: the exclusions must hold against that too.
    listed = sorted(p.relative_to(source).as_posix() for p in (source / "src").rglob("*")
                    if p.is_file())  # fmt: skip
    (source / "src" / "saeuron.egg-info").mkdir()
    (source / "src" / "saeuron.egg-info" / "SOURCES.txt").write_text("\n".join(listed) + "\n")
    # The venv's setuptools (a dev requirement), so the build needs no network.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(source)], check=True,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("saeuron-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    data = "saeuron/data/minicanvas/"
    kept_out = [n for n in names if n.startswith(data) and (
        n.startswith(data + "stats/") or n.endswith(("train_log.json", ".optuna.db"))
        or n in {data + "assets.json", data + "guided/build.json", data + "supervised/build.json"}
    )]  # fmt: skip
    assert kept_out == []
    # What erasing reads at run time is all there.
    for name in ("model_index.json", "params.json", "recipes/moon.json", "tune.json",
                 "prompt_set.json", "recipes/striped.trials.csv",
                 "guided/saes/text_encoder.final_layer_norm/sae.safetensors",
                 "guided/stats/text_encoder.final_layer_norm/moon.safetensors",
                 "saes/unet.up_blocks.1.attentions.1/sae.safetensors",
                 "classifier/classifier.json"):  # fmt: skip
        assert data + name in names, name
    shipped = {p.relative_to(FOLDER).as_posix() for p in FOLDER.rglob("*") if p.is_file()}
    in_wheel = {n.removeprefix(data) for n in names if n.startswith(data)}
    assert in_wheel < shipped and len(in_wheel) > 300


def test_no_shipped_record_names_a_build_machine_path() -> None:
    """Provenance in the shipped JSON names files relative to the bundle or the build's
    work folder, never the absolute folders of the machine that built it."""

    def strings(value):
        if isinstance(value, dict):
            for v in value.values():
                yield from strings(v)
        elif isinstance(value, list):
            for v in value:
                yield from strings(v)
        elif isinstance(value, str):
            yield value

    found = [
        (path.relative_to(FOLDER).as_posix(), text)
        for path in FOLDER.rglob("*.json")
        if path.parent.name != "tokenizer"  # a vocabulary, where "/" is a token
        for text in strings(json.loads(path.read_text(encoding="utf-8")))
        if text.startswith(("/", "~")) or text[1:3] == ":\\"
    ]
    assert found == []
    # The card's examples name the bundle by its hub id, not by the folder it was built in.
    card = (FOLDER / "README.md").read_text(encoding="utf-8")
    assert "--model saeuron/minicanvas" in card and 'model="saeuron/minicanvas"' in card
    assert not re.search(r"--model /|model=\"/", card)


def test_model_loads_as_a_stock_pipeline_with_sd_block_names() -> None:
    pipe = load_pipeline("minicanvas")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    names = dict(pipe.unet.named_modules())
    for i in range(3):
        assert type(names[f"up_blocks.1.attentions.{i}"]).__name__ == "Transformer2DModel"
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    image = pipe("An image of star in neon style.", num_inference_steps=5).images[0]
    assert image.size == (32, 32)


def test_classifier_is_accurate_on_held_out_procedural_images() -> None:
    from saeuron.minicanvas.classifier import MiniCanvasClassifier, evaluate_classifier

    accuracy = evaluate_classifier(
        MiniCanvasClassifier.load(FOLDER / "classifier"), n_images=600, seed=12345
    )
    assert accuracy["object_accuracy"] >= 0.98, accuracy
    assert accuracy["style_accuracy"] >= 0.98, accuracy
    # The scene head finds exactly the two objects of a scene, and one alone.
    assert accuracy["scene_exact_accuracy"] >= 0.9, accuracy
    assert accuracy["single_detect_accuracy"] >= 0.95, accuracy


@pytest.mark.slow
def test_technique_uses_the_bundled_sae_and_features(caplog) -> None:
    from saeuron.erasure.technique import SAeUron

    # Heart's recipe edits UNet blocks only, the first of them where the paper puts objects.
    tech = SAeUron(erase_concept="heart", model="minicanvas", num_inference_steps=10, device="cpu")
    assert "on the fly" not in caplog.text
    assert tech.hookpoint == "unet.up_blocks.1.attentions.1"
    prompts = ["An image of heart in dotted style."]
    erased = np.asarray(tech.generate(prompts, seed=0)[0], dtype=np.float32)
    plain = np.asarray(tech.generate(prompts, seed=0, erase_concept=False)[0], dtype=np.float32)
    assert np.abs(erased - plain).mean() > 1.0


@pytest.mark.slow
def test_quick_bench_erases_the_concept_and_keeps_the_rest(tmp_path) -> None:
    from saeuron.minicanvas.bench import BenchConfig, run_bench

    report = run_bench(BenchConfig(quick=True, out=str(tmp_path)))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").is_file() and (tmp_path / "grid.png").is_file()
    assert saved["results"].keys() == report["results"].keys()
    for concept, rows in report["results"].items():
        before, after = rows["none"], rows["recipe"]
        # The erased concept's accuracy falls a lot ...
        assert after["UA"] >= before["UA"] + 0.5, (concept, before, after)
        # ... while the other concepts of its kind and the other head stay recognisable.
        assert after["IRA"] >= 0.8, (concept, after)
        assert after["CRA"] >= 0.8, (concept, after)
        # The other name and the scenes are scored for every row, unerased included.
        for row in (before, after):
            assert row["n_alias"] == 10 and row["n_scenes"] == 10, row
            assert 0 <= row["UA_alias"] <= 1 and 0 <= row["scene_retention"] <= 1, row
    assert "UA-alias" in (tmp_path / "results.md").read_text()
    assert saved["prompt_following_by_name"]["test_only"]["n_images"] == 100


@pytest.mark.slow
def test_sequential_erasure_holds_earlier_concepts_and_reports_every_step(tmp_path) -> None:
    from saeuron.minicanvas.sequential import SequentialConfig, run_sequential

    cfg = SequentialConfig(
        out=str(tmp_path), styles=["checkered", "diagonal"], objects=["moon"],
        num_inference_steps=10, batch_size=100,
    )  # fmt: skip
    report = run_sequential(cfg)
    styles, objects = report["results"]["style"], report["results"]["object"]
    assert [s["erased"] for s in styles] == [[], ["checkered"], ["checkered", "diagonal"]]
    assert len(objects) == 2
    # Erased concepts lose their accuracy and keep it lost when the next one joins ...
    assert styles[1]["UA"]["checkered"] >= styles[0]["UA"]["checkered"] + 0.5
    assert styles[2]["UA"]["checkered"] >= styles[0]["UA"]["checkered"] + 0.5
    assert styles[2]["UA"]["diagonal"] >= styles[0]["UA"]["diagonal"] + 0.5
    # ... a concept not erased yet is untouched, and the never-erased styles stay recognised.
    assert styles[1]["UA"]["diagonal"] <= 0.2
    assert styles[2]["retention"] >= 0.7
    assert objects[1]["UA"]["moon"] >= objects[0]["UA"]["moon"] + 0.5
    assert "| 2 | **" in (tmp_path / "results.md").read_text()
    with pytest.raises(ConfigError, match="not a MiniCanvas style"):
        SequentialConfig(styles=["moon"])
