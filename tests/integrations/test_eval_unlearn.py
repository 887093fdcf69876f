"""saeuron under eval-unlearn 1.1.2, the benchmark whose ``saeuron`` technique we implement.

eval-unlearn's own wrapper calls ``saeuron.SAeUronPipeline``; these tests drive that wrapper
through eval-unlearn's registry and CLI. Its config pins Stable Diffusion 1.4, which is not
reachable offline, so the model is swapped for the bundled MiniCanvas. The contract tests at
the top need only saeuron and run everywhere.
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import json
import logging
import sys
from collections.abc import Iterator
from importlib.metadata import distribution, entry_points
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch

import saeuron
from saeuron.erasure.features import ConceptFeatures
from saeuron.integrations.eval_unlearn import SAeUronPipeline
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.errors import ConfigError

needs_eval_unlearn = pytest.mark.skipif(
    find_spec("eval_unlearn") is None,
    reason="eval-unlearn is not installed (the dev extra installs it on Python 3.11+)",
)

HOOK = "unet.up_blocks.1.attentions.1"
GROUP = "eval_unlearn.techniques"
THEIR_WRAPPER = "eval_unlearn.techniques.saeuron.wrapper:SAeUronTechnique"
MOON = "An image of moon in neon style."
STAR = "An image of star in neon style."


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# -- the contract, on a tiny random model (no eval-unlearn needed) ----------------------------


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> SAeUronPipeline:
    torch.manual_seed(5)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = HOOK
    root = tmp_path_factory.mktemp("sae")
    sae.save_to_disk(root / HOOK)
    features = root / "cat_features"
    ConceptFeatures.from_latents("cat", [3, 7, 11], meta={"hookpoint": HOOK}).save(features)
    return SAeUronPipeline(
        concept="cat",
        multiplier=-20.0,
        model_id="tiny-sd",
        device="cpu",
        use_fp16=True,  # eval-unlearn's default; the CPU falls back to float32
        sae=str(root),
        hookpoint=HOOK,
        features=str(features),
        num_inference_steps=3,
    )


def test_signature_is_the_one_eval_unlearn_calls() -> None:
    init = inspect.signature(SAeUronPipeline)
    assert list(init.parameters)[:5] == ["concept", "multiplier", "model_id", "device", "use_fp16"]
    assert init.parameters["model_id"].default == "CompVis/stable-diffusion-v1-4"
    assert (init.parameters["device"].default, init.parameters["use_fp16"].default) == (None, True)
    generate = inspect.signature(SAeUronPipeline.generate)
    assert list(generate.parameters)[:5] == [
        "self",
        "prompts",
        "seed",
        "num_inference_steps",
        "guidance_scale",
    ]
    assert generate.parameters["seed"].default is None
    assert saeuron.SAeUronPipeline is SAeUronPipeline  # the lazy top-level export


def test_generate_seeds_prompt_i_with_seed_plus_i(tiny_pipeline) -> None:
    prompts = ["a cat", "a dog"]
    images = tiny_pipeline.generate(prompts, seed=4, num_inference_steps=3, guidance_scale=7.5)
    assert [type(i).__name__ for i in images] == ["Image", "Image"]
    assert images[0].size == (32, 32) and images[0].mode == "RGB"
    # Without the erasure the images are the stock pipeline's, from seeds 4 and 5.
    plain = tiny_pipeline.generate(prompts, seed=4, erase_concept=False)
    stock = tiny_pipeline.pipe(
        prompts,
        num_inference_steps=3,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (4, 5)],
    ).images
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, stock))
    assert np.abs(pixels(images[0]) - pixels(plain[0])).mean() > 1.0
    # Per-call steps reach the sampler; the configured 3 stay the default.
    two = tiny_pipeline.generate(prompts[:1], seed=4, num_inference_steps=2, erase_concept=False)
    stock_two = tiny_pipeline.pipe(
        prompts[:1], num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(4)
    ).images
    assert np.array_equal(pixels(two[0]), pixels(stock_two[0]))
    assert not np.array_equal(pixels(two[0]), pixels(plain[0]))
    # seed=None, what eval-unlearn's runner passes, draws fresh noise on every call.
    first, second = tiny_pipeline.generate("a cat"), tiny_pipeline.generate("a cat")
    assert len(first) == 1 and not np.array_equal(pixels(first[0]), pixels(second[0]))
    assert tiny_pipeline.generate([], seed=0) == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"concept": ""}, "concept"),
        ({"concept": None}, "concept"),
        ({"multiplier": float("nan")}, "multiplier"),
        ({"multiplier": float("inf")}, "multiplier"),
        ({"multiplier": 0.0}, "multiplier"),
        ({"device": "gpu"}, "device"),
        ({"model_id": "someone/other-model"}, "sae"),
        ({"erase_concept": "cat"}, "erase_concept"),
        ({"model": "tiny-sd"}, "model"),
        ({"multipler": -5.0}, "multipler"),
    ],
)
def test_bad_construction_names_the_argument(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        SAeUronPipeline(**kwargs)


def test_bad_model_id_is_reported_under_eval_unlearns_name(tmp_path) -> None:
    with pytest.raises(ConfigError, match="^model_id:"):
        SAeUronPipeline(concept="cat", model_id="no such model", sae=str(tmp_path))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": "0"}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": 1.0}, "guidance_scale"),
        ({"output_type": "np"}, "output_type"),
    ],
)
def test_bad_generate_arguments_name_the_argument(tiny_pipeline, kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        tiny_pipeline.generate(["a cat"], **kwargs)


def test_pyproject_adds_no_second_saeuron_to_eval_unlearn() -> None:
    # eval-unlearn registers "saeuron" itself; one more from us would make the technique
    # depend on the order distributions are found in (its registry keeps the last one).
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert GROUP not in project.get("entry-points", {})
    assert any(r.startswith("eval-unlearn==1.1.2") for r in project["optional-dependencies"]["dev"])


def test_bad_prompts_are_refused(tiny_pipeline) -> None:
    with pytest.raises(ConfigError, match="^prompts:"):
        tiny_pipeline.generate([1, 2])


# -- eval-unlearn itself ------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_unlearn_start() -> list[logging.LogRecord]:
    """Every log record of one eval-unlearn start: importing its techniques, then loading
    the entry points (what its runners and ``eval-unlearn plugins`` do first)."""
    # A start means first import; drop what an earlier test may have imported.
    for name in [m for m in sys.modules if m == "eval_unlearn" or m.startswith("eval_unlearn.")]:
        del sys.modules[name]
    records: list[logging.LogRecord] = []
    previous = logging.getLogRecordFactory()

    # The factory sees every record, including those of eval-unlearn's loggers, which do not
    # propagate to the root logger (so caplog would miss them).
    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        records.append(record)
        return record

    logging.setLogRecordFactory(factory)
    try:
        import eval_unlearn.techniques  # noqa: F401
        from eval_unlearn.registry.entrypoints import load_entrypoints

        load_entrypoints()
    finally:
        logging.setLogRecordFactory(previous)
    return records


@contextlib.contextmanager
def model_swapped_for(model: str) -> Iterator[None]:
    """eval-unlearn's saeuron config pins SD 1.4 (an init=False field); swap in ``model``."""
    from eval_unlearn.techniques.saeuron.config import SAeUronConfig

    original = SAeUronConfig.from_dict.__func__

    def from_dict(cls, data):
        config = original(cls, data)
        object.__setattr__(config, "model_id", model)  # the dataclass is frozen
        return config

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SAeUronConfig, "from_dict", classmethod(from_dict))
        yield


@needs_eval_unlearn
def test_eval_unlearn_starts_without_errors_from_saeuron(eval_unlearn_start) -> None:
    from eval_unlearn.registry import get_technique
    from eval_unlearn.techniques.saeuron.wrapper import SAeUronTechnique

    about_us = [
        f"{r.levelname} {r.getMessage()}"
        for r in eval_unlearn_start
        if r.levelno >= logging.WARNING and "saeuron" in r.getMessage().lower()
    ]
    assert about_us == []
    # eval-unlearn logs an ERROR for each of its own techniques and metrics whose package is
    # absent (uce, mace, fid without torchvision, ...); none of them is ours.
    theirs = {e.name for e in distribution("eval-unlearn").entry_points}
    failed = [
        r.args[0]
        for r in eval_unlearn_start
        if r.levelno >= logging.ERROR and r.msg == "Failed to load plugin %s: %s"
    ]
    assert set(failed) <= theirs - {"saeuron"}
    # One registration, one behaviour: every "saeuron" in the group is eval-unlearn's wrapper.
    assert {e.value for e in entry_points(group=GROUP) if e.name == "saeuron"} == {THEIR_WRAPPER}
    assert get_technique("saeuron") is SAeUronTechnique


@pytest.fixture(scope="module")
def minicanvas_technique(eval_unlearn_start):
    from eval_unlearn.registry import get_technique

    with model_swapped_for("minicanvas"):
        # eval-unlearn's own class, built from its own config keys (its defaults elsewhere).
        return get_technique("saeuron")(
            erase_concept="moon", device="cpu", use_fp16=False, num_inference_steps=4
        )


@needs_eval_unlearn
def test_eval_unlearn_wrapper_generates_with_our_pipeline(minicanvas_technique) -> None:
    tech = minicanvas_technique
    assert isinstance(tech.pipeline, SAeUronPipeline)
    ours = tech.pipeline.technique
    assert (ours.config.model, ours.config.erase_concept, tech.pipeline.multiplier) == (
        "minicanvas",
        "moon",
        -20.0,  # eval-unlearn's default, passed through
    )
    prompts = [MOON, STAR]
    erased = tech.generate(prompts, seed=0)
    plain = tech.generate(prompts, seed=0, erase_concept=False)
    assert [i.size for i in erased] == [(32, 32), (32, 32)]
    # The unerased run is the stock pipeline's from seeds 0 and 1, bit for bit.
    stock = ours.pipe(
        prompts,
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=[torch.Generator("cpu").manual_seed(s) for s in (0, 1)],
    ).images
    assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, stock))
    # The moon changes measurably; the star, whose moon latents never fire, keeps its bits.
    assert np.abs(pixels(erased[0]) - pixels(plain[0])).mean() > 2.0
    assert np.array_equal(pixels(erased[1]), pixels(plain[1]))


@needs_eval_unlearn
def test_eval_unlearn_erases_with_the_recipe_named_in_the_environment(
    eval_unlearn_start, monkeypatch
) -> None:
    """eval-unlearn's technique passes no key of ours; SAEURON_RECIPE reaches the recipe."""
    from eval_unlearn.registry import get_technique

    from saeuron.models.bundles import find_bundle

    recipe = find_bundle("minicanvas").folder / "recipes" / "moon.json"
    monkeypatch.setenv("SAEURON_RECIPE", str(recipe))
    with model_swapped_for("minicanvas"):
        tech = get_technique("saeuron")(
            erase_concept="moon", device="cpu", use_fp16=False, num_inference_steps=4
        )
    ours = tech.pipeline.technique
    assert ours.recipe is not None and ours.recipe.names == ["moon"]
    # The recipe's strengths, not the -20 eval-unlearn sends.
    assert tech.pipeline.multiplier == ours.recipe.concepts["moon"].edits[0].strength
    erased = tech.generate([MOON], seed=0)
    plain = tech.generate([MOON], seed=0, erase_concept=False)
    assert np.abs(pixels(erased[0]) - pixels(plain[0])).mean() > 2.0


@needs_eval_unlearn
def test_eval_unlearn_cli_run_with_an_offline_metric(
    eval_unlearn_start, tmp_path, monkeypatch
) -> None:
    """``eval-unlearn run -c config.json``: saeuron on MiniCanvas, judged by asr_i2p.

    asr_i2p with concept nudity uses NudeNet (offline, in the dev extra). Its prompts come
    from ``datasets.load_dataset("AIML-TUDA/i2p")``, which reads a local folder of that name
    before the hub: the test writes a few prompts there in I2P's columns.
    """
    import datasets

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    i2p = tmp_path / "AIML-TUDA" / "i2p"
    i2p.mkdir(parents=True)
    with open(i2p / "train.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(
            [
                ("prompt", "categories"),
                (MOON, "sexual"),
                ("An image of cross in grainy style.", "violence"),  # filtered out
                (STAR, "hate, sexual"),
            ]
        )
    results = tmp_path / "results"
    config = {
        "output_dir": str(results),
        "technique": {
            "name": "saeuron",
            "config": {
                "erase_concept": "moon",
                "device": "cpu",
                "use_fp16": False,
                "num_inference_steps": 2,
            },
        },
        "metric": {
            "name": "asr_i2p",
            "config": {"concept_name": "nudity", "device": "cpu", "limit": 10},
        },
    }
    (tmp_path / "config.json").write_text(json.dumps(config))

    # Its CLI module quiets these libraries for good at import; put them back afterwards.
    quieted = ["transformers", "datasets", "huggingface_hub", "onnxruntime", "tensorflow"]
    levels = {name: logging.getLogger(name).level for name in quieted}
    try:
        from eval_unlearn import cli

        monkeypatch.setattr(sys, "argv", ["eval-unlearn", "run", "--config", "config.json"])
        with model_swapped_for("minicanvas"):
            cli.main()  # exits only on failure
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)

    # <output_dir>/saeuron_asr_i2p_<run_id>/images/*.png, reports beside that folder.
    runs = sorted(results.glob("saeuron_asr_i2p_*"))
    assert len(runs) == 1, sorted(p.name for p in results.iterdir())
    run_id = runs[0].name.rsplit("_", 1)[1]
    report = json.loads((results / f"{run_id}_report.json").read_text())
    assert report["run_id"] == run_id
    assert (report["technique_name"], report["erase_concept"], report["metric_name"]) == (
        "saeuron",
        "moon",
        "asr_i2p",
    )
    assert report["dataset_metadata"]["total_loaded"] == 2  # the two "sexual" rows
    result = report["metric_result"]
    assert result["name"] == "ASR" and 0.0 <= result["value"] <= 1.0
    details = result["details"]
    assert (details["total_images"], details["detector"]) == (2, "nudenet")
    assert result["value"] == details["unsafe_count"] / 2
    full = json.loads((results / f"{run_id}_report_full.json").read_text())
    assert full["technique_config"]["erase_concept"] == "moon"
    latest = json.loads((results / "saeuron_moon_latest_report.json").read_text())
    assert latest["run_id"] == run_id
    images = sorted((runs[0] / "images").glob("*.png"))
    assert len(images) == 2
    from PIL import Image

    assert all(Image.open(p).size == (32, 32) for p in images)
