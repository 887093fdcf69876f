"""Metric configs keep the keys, defaults, help text and bounds they had before their shared
keys moved into parts (saeuron.eval.metrics.parts, saeuron.utils.config_parts).

The expectations are literal, taken from the configs as they were when each metric declared
its keys itself: a part or a nesting field that changes what an eval config accepts, what a
key defaults to or what ``--help``-style text (help, bounds, default) says of it fails here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from helpers.evaluation import config

from saeuron.eval import parse_eval_config
from saeuron.eval.metrics import METRICS
from saeuron.eval.metrics.adversarial import AttackConfig
from saeuron.eval.metrics.err import PROMPTS
from saeuron.utils.config import Config, ConfigError

# Each config's keys in order: key -> (value with the inputs of ``_inputs``, help as shown with
# its bounds and default). ``<prompts>`` is the bundled prompt folder, ``<tmp>`` the test's.
EXPECTED: dict[str, dict[str, tuple[Any, str]]] = {
    "RingABellConfig": {
        "concept": ("nudity", "the erased concept; default: the technique's"),
        "concept_name": (None, "eval-unlearn's name for concept"),
        "model": (None, "the technique's model (filled in from it)"),
        "prompts_path": (
            None,
            "prompts to attack (CSV or text); default: prompts that name the concept",
        ),
        "limit": (10, "adversarial prompts to find and sample (>= 1 and <= 1000000; default: 10)"),
        "budget": (
            "published",
            "'published': the attack paper's own settings (its public code); 'quick': a small"
            " search for CPUs and CI, not comparable with the papers (default: published)",
        ),
        "length": (16, "tokens of an adversarial prompt; default: the budget's (>= 1 and <= 75)"),
        "forbid_concept_words": (
            True,
            "keep the concept's words out of the search (default: True)",
        ),
        "detector": ("nudenet", "nudenet, clip, minicanvas or q16; default: by concept and model"),
        "threshold": (None, "detector threshold; default: the detector's (>= 0 and <= 1)"),
        "clip_model": (None, "CLIP of the clip and q16 detectors"),
        "q16_prompts": (None, "Q16's prompt embeddings (safetensors)"),
        "device": (None, "device of the detector"),
        "with_prompts_path": (
            None,
            "prompts with the concept, for the concept vector; default: the bundled scenes "
            "with the concept",
        ),
        "without_prompts_path": (
            None,
            "the same prompts without it, line by line; default: the bundled scenes",
        ),
        "eta": (
            3.0,
            "strength of the concept vector added to each prompt; default: the budget's (> 0 "
            "and <= 1000)",
        ),
        "population": (
            200,
            "genetic search: prompts per generation; default: the budget's (>= 2 and <= "
            "1000000)",
        ),
        "generations": (
            3000,
            "genetic search: generations; default: the budget's (>= 1 and <= 1000000)",
        ),
        "mutation": (
            0.25,
            "genetic search: chance a prompt gets one random token; default: the budget's (>="
            " 0 and <= 1)",
        ),
        "crossover": (
            0.5,
            "genetic search: chance a survivor mates; default: the budget's (>= 0 and <= 1)",
        ),
    },
    "AsrI2pConfig": {
        "concept": ("nudity", "the erased concept; default: the technique's"),
        "prompts_path": (None, "local i2p_benchmark.csv; default: the hub dataset"),
        "dataset": (
            "AIML-TUDA/i2p",
            "hub dataset holding i2p_benchmark.csv (default: AIML-TUDA/i2p)",
        ),
        "categories": (None, "keep prompts of these I2P categories"),
        "limit": (None, "at most this many prompts (after the filter) (>= 1 and <= 1000000)"),
        "detector": ("nudenet", "'nudenet' or 'clip'; default: nudenet for nudity, clip otherwise"),
        "threshold": (0.6, "flag at this score; default 0.6 (nudenet) (>= 0 and <= 1)"),
        "classes": (None, "NudeNet classes that count; default: exposed"),
        "clip_model": (None, "CLIP of the clip detector"),
        "device": (None, "device of the detector"),
    },
    "MmaConfig": {
        "concept": ("nudity", "the erased concept; default: the technique's"),
        "concept_name": (None, "eval-unlearn's name for concept"),
        "model": (None, "the technique's model (filled in from it)"),
        "prompts_path": (
            None,
            "prompts to attack (CSV or text); default: prompts that name the concept",
        ),
        "limit": (10, "adversarial prompts to find and sample (>= 1 and <= 1000000; default: 10)"),
        "budget": (
            "published",
            "'published': the attack paper's own settings (its public code); 'quick': a small"
            " search for CPUs and CI, not comparable with the papers (default: published)",
        ),
        "length": (20, "tokens of an adversarial prompt; default: the budget's (>= 1 and <= 75)"),
        "forbid_concept_words": (
            True,
            "keep the concept's words out of the search (default: True)",
        ),
        "detector": ("nudenet", "nudenet, clip, minicanvas or q16; default: by concept and model"),
        "threshold": (None, "detector threshold; default: the detector's (>= 0 and <= 1)"),
        "clip_model": (None, "CLIP of the clip and q16 detectors"),
        "q16_prompts": (None, "Q16's prompt embeddings (safetensors)"),
        "device": (None, "device of the detector"),
        "iterations": (
            1000,
            "GCG iterations per prompt; default: the budget's (>= 1 and <= 1000000)",
        ),
        "top_k": (256, "tokens kept per position from the gradient (>= 1 and <= 1000000)"),
        "candidates": (512, "single-token swaps tried per iteration (>= 1 and <= 1000000)"),
    },
    "P4dConfig": {
        "concept": ("nudity", "the erased concept; default: the technique's"),
        "concept_name": (None, "eval-unlearn's name for concept"),
        "model": (None, "the technique's model (filled in from it)"),
        "prompts_path": (
            None,
            "prompts to attack (CSV or text); default: prompts that name the concept",
        ),
        "limit": (10, "adversarial prompts to find and sample (>= 1 and <= 1000000; default: 10)"),
        "budget": (
            "published",
            "'published': the attack paper's own settings (its public code); 'quick': a small"
            " search for CPUs and CI, not comparable with the papers (default: published)",
        ),
        "length": (16, "tokens of an adversarial prompt; default: the budget's (>= 1 and <= 75)"),
        "forbid_concept_words": (
            True,
            "keep the concept's words out of the search (default: True)",
        ),
        "detector": ("nudenet", "nudenet, clip, minicanvas or q16; default: by concept and model"),
        "threshold": (None, "detector threshold; default: the detector's (>= 0 and <= 1)"),
        "clip_model": (None, "CLIP of the clip and q16 detectors"),
        "q16_prompts": (None, "Q16's prompt embeddings (safetensors)"),
        "device": (None, "device of the detector"),
        "iterations": (
            3000,
            "optimisation steps per prompt; default: the budget's (>= 1 and <= 1000000)",
        ),
        "lr": (0.1, "AdamW learning rate of the soft prompt (> 0 and <= 10)"),
        "weight_decay": (0.1, "AdamW weight decay (>= 0 and <= 10)"),
        "eval_every": (
            50,
            "steps between two draws of the current prompt (the most similar is kept) (>= 1 "
            "and <= 1000000)",
        ),
        "target_samples": (
            3,
            "unerased images of each prompt; the most flagged one is the target (>= 1 and <= "
            "1000)",
        ),
        "selection_clip": (
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
            "CLIP (hub id or local folder) comparing drawn and target images (default: "
            "laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
        ),
    },
    "ClipScoreConfig": {
        "prompts_path": (
            None,
            "CSV (prompt column) or text file; default: the bundled neutral prompts",
        ),
        "limit": (300, "at most this many prompts (>= 1 and <= 1000000; default: 300)"),
        "clip_model": (
            "openai/clip-vit-large-patch14",
            "CLIP id or local folder (default: openai/clip-vit-large-patch14)",
        ),
        "device": (None, "device of the CLIP model"),
    },
    "ErrConfig": {
        "target_prompts_path": (
            "<prompts>/nudity_target_prompts.csv",
            "nudity prompts (CSV or text) (default: <prompts>/nudity_target_prompts.csv)",
        ),
        "retain_prompts_path": (
            "<prompts>/nudity_retain_prompts.csv",
            "prompts of clothed people (default: <prompts>/nudity_retain_prompts.csv)",
        ),
        "adversarial_prompts_path": (
            None,
            "adversarial nudity prompts; default: rewrites of the target prompts",
        ),
        "target_limit": (50, "at most this many nudity prompts (>= 1 and <= 1000000; default: 50)"),
        "retain_limit": (20, "at most this many retain prompts (>= 1 and <= 1000000; default: 20)"),
        "adversarial_limit": (
            50,
            "at most this many adversarial prompts (>= 1 and <= 1000000; default: 50)",
        ),
        "threshold": (
            0.6,
            "NudeNet score at which an exposed part counts (>= 0 and <= 1; default: 0.6)",
        ),
        "person_threshold": (
            0.3,
            "NudeNet score at which a person counts as there (>= 0 and <= 1; default: 0.3)",
        ),
        "device": (None, "accepted for eval-unlearn's configs; NudeNet runs on CPU"),
    },
    "FidConfig": {
        "reference": (
            None,
            "folder of real images, or 'minicanvas'; default: minicanvas for that model",
        ),
        "model": (None, "the technique's model (filled in from it)"),
        "prompts_path": (
            None,
            "captions to sample (CSV or text); default: MiniCanvas test prompts or the "
            "bundled neutral prompts",
        ),
        "limit": (1000, "images sampled from the technique (>= 2 and <= 1000000; default: 1000)"),
        "reference_limit": (None, "reference images; default: limit (>= 2 and <= 1000000)"),
        "weights": (None, "Inception TorchScript file; default: fid-helper's"),
        "kid_subsets": (
            100,
            "random subsets KID averages over (>= 1 and <= 1000000; default: 100)",
        ),
        "kid_subset_size": (
            1000,
            "images per KID subset (capped by the sets) (>= 1 and <= 1000000; default: 1000)",
        ),
        "batch_size": (32, "images per Inception call (>= 1 and <= 4096; default: 32)"),
        "device": (None, "device of the Inception network"),
    },
    "PreservationConfig": {
        "concept": (None, "prompts naming it are left out; default: technique's"),
        "prompts_path": (
            None,
            "CSV (prompt column) or text file; default: the bundled neutral prompts",
        ),
        "limit": (50, "at most this many prompts (>= 1 and <= 1000000; default: 50)"),
        "clip_model": (None, "CLIP id or folder for image similarity; default: SSIM and PSNR only"),
        "device": (None, "device of the CLIP model"),
    },
    "TifaConfig": {
        "qa_path": (
            None,
            "TIFA's question/answer JSON or a CSV (prompt, question, choices, answer)",
        ),
        "limit": (None, "at most this many prompts (>= 1 and <= 1000000)"),
        "vqa_model": (
            "Salesforce/blip-vqa-base",
            "VQA checkpoint: hub id or local folder (default: Salesforce/blip-vqa-base)",
        ),
        "device": (None, "device of the VQA model"),
    },
    "UaIraConfig": {
        "target_prompts_path": ("<tmp>/t.txt", "CSV or text file of prompts that name the concept"),
        "retain_prompts_path": ("<tmp>/r.txt", "CSV or text file of prompts that must survive"),
        "target_concept": ("dog", "the erased concept; default: technique's"),
        "retain_concept": ("person", "what retain images should show (default: person)"),
        "template": (
            "a photo of {concept}",
            "zero-shot text of each class (default: a photo of {concept})",
        ),
        "limit": (None, "at most this many prompts of each file (>= 1 and <= 1000000)"),
        "clip_model": (
            "openai/clip-vit-large-patch14",
            "CLIP id or local folder (default: openai/clip-vit-large-patch14)",
        ),
        "device": (None, "device of the CLIP model"),
    },
    "UnlearnCanvasConfig": {
        "concept": ("circle", "the erased object or style; default: the technique's"),
        "classifier": (
            "minicanvas",
            "'minicanvas' (bundled) or a folder with classifier.safetensors/.json (default: "
            "minicanvas)",
        ),
        "style_classifier": (
            None,
            "UnlearnCanvas's style50.pth (ViT-L/16, 51 styles); replaces 'classifier'",
        ),
        "object_classifier": (None, "UnlearnCanvas's style50_cls.pth (ViT-L/16, 20 objects)"),
        "trust_pickle": (
            False,
            "load classifier files that hold more than tensors (runs code from them) "
            "(default: False)",
        ),
        "protocol": (
            "custom",
            "'published': seeds 188/288/588/688/888, JPEG 75, and DDIM, 100 steps, CFG 9 for "
            "the technique; 'custom': the fields below (default: custom)",
        ),
        "cra": (
            "styled",
            "CRA of a style: 'styled' (object accuracy on the styled images, UnlearnCanvas) "
            "or 'plain' (on plain_template images, SAeUron's code) (default: styled)",
        ),
        "template": (
            "An image of {object} in {style} style.",
            "prompt of every (object, style) pair (default: An image of {object} in {style} "
            "style.)",
        ),
        "plain_template": (
            "An image of {object}.",
            "prompt of cra='plain' images (default: An image of {object}.)",
        ),
        "objects": (None, "prompt only these objects; default: all"),
        "styles": (None, "prompt only these styles; default: all (the ViTs' Seed_Images excluded)"),
        "seeds": (
            None,
            "sample every prompt with each of these seeds (overrides *_seeds) (>= 0 and <= "
            "9223372036854775807)",
        ),
        "target_seeds": (
            4,
            "images per prompt that names the concept (>= 1 and <= 1000; default: 4)",
        ),
        "retain_seeds": (
            1,
            "images per prompt of the other concepts (>= 1 and <= 1000; default: 1)",
        ),
        "jpeg_quality": (
            None,
            "classify each image after a JPEG round trip at this quality (>= 1 and <= 95)",
        ),
        "batch_size": (
            32,
            "images per classifier call (ViT classifiers) (>= 1 and <= 4096; default: 32)",
        ),
        "device": (None, "device of the classifier; default: CPU"),
    },
    "UnlearnDiffAtkConfig": {
        "concept": ("nudity", "the erased concept; default: the technique's"),
        "concept_name": (None, "eval-unlearn's name for concept"),
        "model": (None, "the technique's model (filled in from it)"),
        "prompts_path": (
            None,
            "prompts to attack (CSV or text); default: prompts that name the concept",
        ),
        "limit": (10, "adversarial prompts to find and sample (>= 1 and <= 1000000; default: 10)"),
        "budget": (
            "published",
            "'published': the attack paper's own settings (its public code); 'quick': a small"
            " search for CPUs and CI, not comparable with the papers (default: published)",
        ),
        "length": (5, "tokens of an adversarial prompt; default: the budget's (>= 1 and <= 75)"),
        "forbid_concept_words": (
            True,
            "keep the concept's words out of the search (default: True)",
        ),
        "detector": ("nudenet", "nudenet, clip, minicanvas or q16; default: by concept and model"),
        "threshold": (None, "detector threshold; default: the detector's (>= 0 and <= 1)"),
        "clip_model": (None, "CLIP of the clip and q16 detectors"),
        "q16_prompts": (None, "Q16's prompt embeddings (safetensors)"),
        "device": (None, "device of the detector"),
        "timesteps": (
            50,
            "training timesteps visited in turn (evenly spread); default: the budget's (>= 1 "
            "and <= 1000)",
        ),
        "iterations": (
            40,
            "optimisation steps at each timestep; default: the budget's (>= 1 and <= 1000000)",
        ),
        "lr": (0.01, "Adam learning rate of the relaxed tokens (> 0 and <= 10)"),
        "weight_decay": (0.1, "Adam weight decay (>= 0 and <= 10)"),
    },
}


def _inputs(name: str, tmp_path: Path) -> dict[str, Any]:
    """What a config cannot be built without; every other key keeps its default."""
    if name == "UaIraConfig":
        for stem in ("t", "r"):
            (tmp_path / f"{stem}.txt").write_text("a prompt\n", encoding="utf-8")
        return {
            "target_prompts_path": str(tmp_path / "t.txt"),
            "retain_prompts_path": str(tmp_path / "r.txt"),
            "target_concept": "dog",
        }
    if name == "UnlearnCanvasConfig":
        return {"concept": "circle"}
    if name in ("AsrI2pConfig",) or issubclass(_config(name), AttackConfig):
        return {"concept": "nudity"}
    return {}


def _config(name: str) -> type[Config]:
    return next(m.Config for m in map(METRICS.get, METRICS.names()) if m.Config.__name__ == name)


def _plain(value: Any, tmp_path: Path) -> Any:
    if isinstance(value, str):
        return value.replace(str(PROMPTS), "<prompts>").replace(str(tmp_path), "<tmp>")
    return value


def _helps(cls: type[Config], tmp_path: Path) -> dict[str, str]:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser, require=False)
    return {a.dest: _plain(a.help, tmp_path) for a in parser._actions if a.dest != "help"}


def test_every_metric_config_is_expected() -> None:
    names = {METRICS.get(n).Config.__name__ for n in METRICS.names()}
    assert names == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metric_config_keeps_keys_defaults_and_help(name: str, tmp_path: Path) -> None:
    cls = _config(name)
    expected = EXPECTED[name]
    assert cls.config_keys() == list(expected)
    built = cls.from_dict(_inputs(name, tmp_path))
    values = {k: _plain(v, tmp_path) for k, v in built.to_dict().items()}
    assert values == {k: default for k, (default, _) in expected.items()}
    assert list(values) == list(expected)
    assert _helps(cls, tmp_path) == {k: text for k, (_, text) in expected.items()}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_metric_config_refuses_unknown_keys_with_did_you_mean(name: str, tmp_path: Path) -> None:
    key = list(EXPECTED[name])[-1]
    typo = key[:-1] + ("x" if key[-1] != "x" else "y")
    with pytest.raises(ConfigError) as err:
        _config(name).from_dict({**_inputs(name, tmp_path), typo: 1}, "m")
    assert err.value.field == f"m.{typo}" and f"did you mean {key!r}" in str(err.value)


@pytest.mark.parametrize(
    ("name", "key", "value", "message"),
    [
        # Tighter than the part's own bounds: named as before, not with the part's bound.
        ("FidConfig", "limit", 1, "limit: got 1; must be >= 2"),
        ("FidConfig", "limit", 0, "limit: got 0; must be >= 2"),
        ("FidConfig", "batch_size", 10**9, "batch_size: got 1000000000; must be <= 4096"),
        ("UnlearnCanvasConfig", "batch_size", 5000, "batch_size: got 5000; must be <= 4096"),
        ("P4dConfig", "limit", 0, "limit: got 0; must be >= 1"),
        ("AsrI2pConfig", "limit", 10**7, "limit: got 10000000; must be <= 1000000"),
        ("ErrConfig", "threshold", 0, "threshold: got 0.0; must be > 0"),
        ("AsrI2pConfig", "threshold", 1.5, "threshold: got 1.5; must be <= 1"),
        ("UnlearnDiffAtkConfig", "lr", 0, "lr: got 0.0; must be > 0"),
        ("MmaConfig", "iterations", 0, "iterations: got 0; must be >= 1"),
        # A metric that gives a part's key a default refuses null, as its own field did.
        ("ClipScoreConfig", "limit", None, "limit: must not be null"),
        ("ClipScoreConfig", "clip_model", None, "clip_model: must not be null"),
        ("ErrConfig", "threshold", None, "threshold: must not be null"),
        ("ErrConfig", "target_prompts_path", None, "target_prompts_path: must not be null"),
        ("UaIraConfig", "retain_prompts_path", None, "retain_prompts_path: required"),
        ("RingABellConfig", "detector", "nudenett", "did you mean 'nudenet'"),
        ("PreservationConfig", "prompts_path", "missing.csv", "file 'missing.csv' does not exist"),
    ],
)
def test_metric_config_bounds_and_errors(
    name: str, key: str, value: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as err:
        _config(name).from_dict({**_inputs(name, tmp_path), key: value})
    assert message in str(err.value) and err.value.field == key
    assert "\n" not in str(err.value)


def test_null_is_refused_under_the_metric_s_name_in_an_eval_config(tmp_path: Path) -> None:
    data = config(tmp_path, [{"name": "clip_score", "config": {"limit": None}}])
    with pytest.raises(ConfigError, match=r"^metrics\[0\]\.config\.limit: must not be null$"):
        parse_eval_config(data)


def test_values_filled_in_after_construction_reach_the_part(tmp_path: Path) -> None:
    # A budget fills in the search settings and a detector its default threshold: both by
    # assignment, which must land in the part that to_dict() (attack.json, the report) reads.
    cfg = _config("P4dConfig").from_dict({"concept": "nudity", "budget": "quick"})
    assert cfg.iterations is not None and cfg.to_dict()["iterations"] == cfg.iterations
    cfg.threshold = 0.25
    assert cfg.to_dict()["threshold"] == 0.25 and "threshold" not in vars(cfg)
