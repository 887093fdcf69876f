"""The MiniCanvas commands' settings: every command accepts the keys and flags it always did,
with the same defaults and help text, however its config is composed of shared parts."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from saeuron.minicanvas.assets_config import AssetConfig
from saeuron.minicanvas.bench_config import BenchConfig
from saeuron.minicanvas.demo_config import DemoConfig
from saeuron.minicanvas.guided_config import GuidedBuildConfig
from saeuron.minicanvas.model_config import ModelTrainConfig
from saeuron.minicanvas.saemnesia_config import SupervisedBuildConfig
from saeuron.minicanvas.sequential_config import SequentialConfig
from saeuron.models.resolve import resolve_model
from saeuron.training.train_config import TrainConfig
from saeuron.utils.config import Config, ConfigError

CONFIGS: dict[str, type[Config]] = {
    cls.__name__: cls
    for cls in (
        AssetConfig, BenchConfig, DemoConfig, GuidedBuildConfig, ModelTrainConfig,
        SupervisedBuildConfig, SequentialConfig,
    )
}  # fmt: skip

# The public contract of each command: its keys (JSON, Python keywords), in order, and the
# values it runs with when given none (after its __post_init__ fills them in).
KEYS: dict[str, list[str]] = {
    "AssetConfig": [
        "model",
        "out",
        "num_inference_steps",
        "guidance_scale",
        "k",
        "expansion_factor",
        "epochs",
        "batch_size",
        "seed",
        "workdir",
    ],
    "BenchConfig": [
        "out",
        "quick",
        "concepts",
        "variants",
        "seeds",
        "retain_seeds",
        "num_inference_steps",
        "guidance_scale",
        "batch_size",
        "model",
        "retain_every",
        "grid_variant",
        "template",
        "alias_seeds",
        "scene_seeds",
        "scene_template",
    ],
    "DemoConfig": ["out", "object", "style", "steps", "seed", "retain", "variants"],
    "GuidedBuildConfig": [
        "model",
        "out",
        "hookpoints",
        "prompts_per_pair",
        "num_inference_steps",
        "guidance_scale",
        "k",
        "expansion_factor",
        "topk",
        "epochs",
        "batch_size",
        "dead_tokens",
        "prefixed_copies",
        "prefix_words",
        "seed",
        "workdir",
        "stats_kinds",
    ],
    "ModelTrainConfig": [
        "out",
        "seed",
        "n_images",
        "n_scenes",
        "vae_steps",
        "vae_from",
        "vae_batch",
        "unet_steps",
        "unet_batch",
        "init_from",
        "lr",
        "ema_decay",
        "caption_dropout",
        "threads",
        "save_every",
        "device",
    ],
    "SupervisedBuildConfig": [
        "model",
        "out",
        "num_inference_steps",
        "guidance_scale",
        "lr",
        "max_epochs",
        "patience",
        "seed",
        "workdir",
    ],
    "SequentialConfig": [
        "out",
        "styles",
        "objects",
        "seeds",
        "num_inference_steps",
        "batch_size",
        "variant",
        "extra",
    ],
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "AssetConfig": {
        "model": "minicanvas",
        "out": None,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "k": 8,
        "expansion_factor": 16,
        "epochs": 30,
        "batch_size": 1024,
        "seed": 0,
        "workdir": None,
    },
    "BenchConfig": {
        "out": "minicanvas-bench",
        "quick": False,
        "concepts": [
            "circle",
            "square",
            "triangle",
            "star",
            "cross",
            "heart",
            "moon",
            "arrow",
            "house",
            "ring",
            "striped",
            "dotted",
            "checkered",
            "outlined",
            "gradient",
            "diagonal",
            "neon",
            "pastel",
            "grainy",
            "blueprint",
        ],
        "variants": ["none", "saeuron", "recipe", "saemnesia"],
        "seeds": [188, 288, 588, 688],
        "retain_seeds": 1,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "batch_size": 50,
        "model": "minicanvas",
        "retain_every": 1,
        "grid_variant": "recipe",
        "template": "An image of {object} in {style} style.",
        "alias_seeds": 2,
        "scene_seeds": 2,
        "scene_template": "An image of a {object} and a {object2} in {style} style.",
    },
    "DemoConfig": {
        "out": "demo.png",
        "object": "moon",
        "style": "checkered",
        "steps": 20,
        "seed": 188,
        "retain": 20,
        "variants": ["recipe", "paper"],
    },
    "GuidedBuildConfig": {
        "model": "minicanvas",
        "out": None,
        "hookpoints": ["unet.up_blocks.2.attentions.2", "unet.up_blocks.1.attentions.1"],
        "prompts_per_pair": 5,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "k": 8,
        "expansion_factor": 16,
        "topk": "batch",
        "epochs": 6,
        "batch_size": 1024,
        "dead_tokens": 50000,
        "prefixed_copies": 0,
        "prefix_words": 5,
        "seed": 0,
        "workdir": None,
        "stats_kinds": [],
    },
    "ModelTrainConfig": {
        "out": "",
        "seed": 0,
        "n_images": 20000,
        "n_scenes": 10000,
        "vae_steps": 1500,
        "vae_from": "",
        "vae_batch": 64,
        "unet_steps": 4500,
        "unet_batch": 64,
        "init_from": "",
        "lr": 0.0005,
        "ema_decay": 0.999,
        "caption_dropout": 0.1,
        "threads": 0,
        "save_every": 0,
        "device": None,
    },
    "SupervisedBuildConfig": {
        "model": "minicanvas",
        "out": None,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "lr": 0.003,
        "max_epochs": 80,
        "patience": 5,
        "seed": 0,
        "workdir": None,
    },
    "SequentialConfig": {
        "out": "minicanvas-sequential",
        "styles": ["striped", "checkered", "diagonal", "grainy", "outlined", "pastel"],
        "objects": ["moon", "triangle", "heart", "square", "arrow", "star"],
        "seeds": [188],
        "num_inference_steps": 20,
        "batch_size": 50,
        "variant": "recipe",
        "extra": True,
    },
}

# What --help says of each flag.
HELP: dict[str, dict[str, str]] = {
    "AssetConfig": {
        "model": "the MiniCanvas pipeline to build assets for (default: minicanvas)",
        "out": "output folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)",
        "num_inference_steps": "DDIM steps of capture and statistics (>= 1 and <= "
        "1000; default: 20)",
        "guidance_scale": "CFG scale of capture and statistics (>= 0; default: 7.5)",
        "k": "SAE: active latents per token (>= 1; default: 8)",
        "expansion_factor": "SAE: latents per input channel (>= 1; default: 16)",
        "epochs": "SAE training epochs (>= 1; default: 30)",
        "batch_size": "SAE training batch (tokens) (>= 1 and <= 16777216; default: 1024)",
        "seed": "random seed (>= 0 and <= 9223372036854775807; default: 0)",
        "workdir": "where activations go; default: a temporary folder",
    },
    "BenchConfig": {
        "out": "folder for results.json, results.md, grid.png (default: minicanvas-bench)",
        "quick": "a CI-sized subset: 3 concepts, 2 variants, 2 seeds, 10 steps (default: False)",
        "concepts": "concepts to erase; default: all 20",
        "variants": "rows of the table; default: none, saeuron (the published "
        "method), recipe (the default), saemnesia",
        "seeds": "seeds of the target prompts; default: test seeds (>= 0 and <= "
        "9223372036854775807)",
        "retain_seeds": "seeds per retained (non-target) prompt (>= 1 and <= 100; default: 1)",
        "num_inference_steps": "DDIM steps (quick: at most 10) (>= 1 and <= 1000; default: 20)",
        "guidance_scale": "CFG scale (>= 0 and <= 100; default: 7.5)",
        "batch_size": "images per pipeline call (>= 1 and <= 4096; default: 50)",
        "model": "the MiniCanvas pipeline (default: minicanvas)",
        "retain_every": "judge retention on every N-th retained prompt (1: all 90; "
        "for quick checks) (>= 1; default: 1)",
        "grid_variant": "the variant whose erased images grid.png shows (one of none, "
        "negative_prompt, saeuron, saeuron_guidance_both, "
        "saeuron_paper_error, saemnesia, recipe; default: recipe)",
        "template": "prompt template with {object} and {style} (held-out phrasings) "
        "(default: An image of {object} in {style} style.)",
        "alias_seeds": "test seeds for the other-name prompts (UA-alias); 0: none (>= "
        "0 and <= 100; default: 2)",
        "scene_seeds": "test seeds for the two-object scenes (10 per seed); 0: none "
        "(>= 0 and <= 100; default: 2)",
        "scene_template": "scene template with {object}, {object2} and {style} "
        "(default: An image of a {object} and a {object2} in "
        "{style} style.)",
    },
    "DemoConfig": {
        "out": "before/after grid image (.png) (default: demo.png)",
        "object": "MiniCanvas object to erase (default: moon)",
        "style": "MiniCanvas style to erase (default: checkered)",
        "steps": "DDIM steps (>= 1 and <= 1000; default: 20)",
        "seed": "seed of the sampled images (>= 0 and <= 9223372036854775807; default: 188)",
        "retain": "images of other concepts used for retention accuracy (>= 1 and <= "
        "90; default: 20)",
        "variants": "erasures shown side by side: 'recipe' (the default, each "
        "concept's tuned recipe) and 'paper' (the published SAeUron "
        "method)",
    },
    "GuidedBuildConfig": {
        "model": "the MiniCanvas pipeline (default: minicanvas)",
        "out": "bundle folder; default: the user's copy of the shipped bundle "
        "($SAEURON_CACHE/bundles/minicanvas)",
        "hookpoints": "blocks to train SAEs at (default: "
        "unet.up_blocks.2.attentions.2,unet.up_blocks.1.attentions.1)",
        "prompts_per_pair": "anchor prompts per (object, style) pair (each its "
        "own seed), plus unstyled ones (default: 5)",
        "num_inference_steps": "DDIM steps of the capture (default: 20)",
        "guidance_scale": "CFG scale of the capture (must be > 1) (default: 7.5)",
        "k": "SAE: active latents per token (default: 8)",
        "expansion_factor": "SAE: latents per input channel (default: 16)",
        "topk": "'batch' (BatchTopK) or 'token' (one of batch, token; default: batch)",
        "epochs": "SAE training epochs (default: 6)",
        "batch_size": "SAE training batch (tokens) (>= 1 and <= 16777216; default: 1024)",
        "dead_tokens": "a latent silent for this many tokens gets the AuxK loss "
        "(revives it) (default: 50000)",
        "prefixed_copies": "extra copies of each anchor prompt, each in a "
        "random anchor phrasing behind 0 to --prefix-words "
        "random words of the tokenizer's vocabulary: the "
        "concept words in the contexts an attacker's prefix "
        "or a new phrasing puts them in (default: 0)",
        "prefix_words": "most random words in front of a prefixed copy (default: 5)",
        "seed": "seed of capture, training and the prefixed copies (>= 0 and <= "
        "9223372036854775807; default: 0)",
        "workdir": "where captures go; default: a temporary folder",
        "stats_kinds": "HOOKPOINT=KIND entries: write only that kind's "
        "statistics at that block (keeps the bundle small); "
        "default: both kinds everywhere",
    },
    "ModelTrainConfig": {
        "out": "folder for the pipeline; default: the user's copy of the shipped "
        "bundle ($SAEURON_CACHE/bundles/minicanvas)",
        "seed": "seed of data, initialisation and training (>= 0 and <= "
        "9223372036854775807; default: 0)",
        "n_images": "procedural training images of one object (>= 1 and <= "
        "100000000; default: 20000)",
        "n_scenes": "procedural training scenes of two objects (>= 0 and <= "
        "100000000; default: 10000)",
        "vae_steps": "autoencoder optimisation steps (>= 1 and <= 100000000; default: 1500)",
        "vae_from": "reuse the autoencoder of this pipeline (a folder or a "
        "bundle name, such as minicanvas) instead of training one "
        "(default: )",
        "vae_batch": "autoencoder batch size (>= 1 and <= 65536; default: 64)",
        "unet_steps": "UNet + text encoder optimisation steps (>= 1 and <= "
        "100000000; default: 4500)",
        "unet_batch": "UNet batch size (>= 1 and <= 65536; default: 64)",
        "init_from": "start the UNet and text encoder from this pipeline's "
        "weights (a folder or a bundle name) and fine-tune them, "
        "instead of training from scratch (default: )",
        "lr": "peak learning rate of the UNet and text encoder (> 0 and <= 1; default: 0.0005)",
        "ema_decay": "EMA decay of the weights that are saved (>= 0 and < 1; default: 0.999)",
        "caption_dropout": "share of empty captions (for CFG) (>= 0 and < 1; default: 0.1)",
        "threads": "torch CPU threads; 0 leaves torch's default (>= 0 and <= 4096)",
        "save_every": "also save the EMA pipeline every N denoiser steps (0: end "
        "only) (>= 0 and <= 100000000; default: 0)",
        "device": "cpu, cuda, mps; default: the best available",
    },
    "SupervisedBuildConfig": {
        "model": "the MiniCanvas pipeline (default: minicanvas)",
        "out": "bundle folder; default: the user's copy of the shipped "
        "bundle ($SAEURON_CACHE/bundles/minicanvas)",
        "num_inference_steps": "DDIM steps of the capture (as the assets) "
        "(>= 1 and <= 1000; default: 20)",
        "guidance_scale": "CFG scale of the capture (>= 0 and <= 100; default: 7.5)",
        "lr": "Adam learning rate of the fine-tune (> 0 and <= 1; default: 0.003)",
        "max_epochs": "at most this many epochs (>= 1 and <= 1000000; default: 80)",
        "patience": "early stopping: epochs without held-out gain (>= 1 and "
        "<= 1000000; default: 5)",
        "seed": "seed of capture and fine-tune (>= 0 and <= 9223372036854775807; default: 0)",
        "workdir": "where activations go; default: a temporary folder",
    },
    "SequentialConfig": {
        "out": "folder for results.json and results.md (default: minicanvas-sequential)",
        "styles": "styles erased one after another (default: "
        "striped,checkered,diagonal,grainy,outlined,pastel)",
        "objects": "objects erased one after another (default: "
        "moon,triangle,heart,square,arrow,star)",
        "seeds": "seeds of every (object, style) prompt (>= 0 and <= "
        "9223372036854775807; default: 188)",
        "num_inference_steps": "DDIM steps (>= 1 and <= 1000; default: 20)",
        "batch_size": "images per pipeline call (>= 1 and <= 4096; default: 50)",
        "variant": "'recipe' (the default recipes) or 'saeuron' (the published "
        "method, tuned gamma) (one of saeuron, recipe)",
        "extra": "also UA-alias and in-scene scores of the erased concepts "
        "(first seed) (default: True)",
    },
}


def _parser(cls: type[Config]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keys_and_defaults_are_the_commands(name: str) -> None:
    cls = CONFIGS[name]
    assert cls.config_keys() == KEYS[name]
    assert cls().to_dict() == DEFAULTS[name]
    assert cls.from_dict({}).to_dict() == DEFAULTS[name]
    # A round trip through JSON keeps every value.
    assert cls.from_dict(cls().to_dict()).to_dict() == DEFAULTS[name]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flags_and_help_are_the_commands(name: str) -> None:
    actions = [a for a in _parser(CONFIGS[name])._actions if a.dest != "help"]
    # One flag per key, spelled after it (a switch also has its --no- form).
    assert [a.option_strings[0] for a in actions] == [
        "--" + key.replace("_", "-") for key in KEYS[name]
    ]
    assert {a.dest: a.help for a in actions} == HELP[name]


@pytest.mark.parametrize(
    ("name", "key"),
    [("BenchConfig", "out"), ("DemoConfig", "out"), ("DemoConfig", "variants"),
     ("ModelTrainConfig", "out"), ("SequentialConfig", "out"), ("SequentialConfig", "seeds"),
     ("AssetConfig", "model"), ("BenchConfig", "model")],
)  # fmt: skip
def test_a_key_with_a_default_takes_no_null(name: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: must not be null$"):
        CONFIGS[name].from_dict({key: None})


def test_quick_bench_settings_are_its_keys() -> None:
    # What quick fills in is what to_dict, replace and the run read.
    cfg = BenchConfig(quick=True, num_inference_steps=20)
    assert cfg.num_inference_steps == cfg.to_dict()["num_inference_steps"] == 10
    assert cfg.to_dict()["variants"] == ["none", "recipe"] == cfg.variants
    assert cfg.to_dict()["seeds"] == cfg.seeds and len(cfg.seeds) == 2
    assert cfg.replace(batch_size=8).to_dict() == {**cfg.to_dict(), "batch_size": 8}


def test_model_name_is_written_into_its_key(tmp_path) -> None:
    cfg = GuidedBuildConfig(model="minicanvas", out=str(tmp_path))
    assert cfg.model == cfg.to_dict()["model"] == cfg.resolved_model.name
    assert "model" not in vars(cfg)
    # A model resolved by the caller is taken as it is, not looked up again.
    resolved = resolve_model("minicanvas")
    cfg = BenchConfig(model=resolved, out=str(tmp_path / "b"))
    assert cfg.resolved_model is resolved and cfg.to_dict()["model"] == resolved.name


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [("AssetConfig", {"guidance_scale": -1}, "guidance_scale: got -1.0; must be >= 0"),
     ("BenchConfig", {"guidance_scale": 101}, "guidance_scale: got 101.0; must be <= 100"),
     ("BenchConfig", {"batch_size": 4097}, "batch_size: got 4097; must be <= 4096"),
     ("GuidedBuildConfig", {"guidance_scale": 1}, "guidance_scale: got 1.0; must be > 1"),
     ("GuidedBuildConfig", {"num_inference_steps": 0}, "num_inference_steps: got 0; must be >= 1"),
     ("GuidedBuildConfig", {"topk": "tokens"}, "topk: got 'tokens' (did you mean 'token'?); "
      "allowed: 'batch', 'token'"),
     ("SupervisedBuildConfig", {"lr": 0}, "lr: got 0.0; must be > 0"),
     ("AssetConfig", {"k": 0}, "k: got 0; must be >= 1"),
     ("SequentialConfig", {"num_inference_steps": 1001},
      "num_inference_steps: got 1001; must be <= 1000")],
)  # fmt: skip
def test_each_command_keeps_its_bounds(name: str, data: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError) as caught:
        CONFIGS[name].from_dict(data)
    assert str(caught.value) == error


def test_guided_build_takes_what_its_own_checks_allow() -> None:
    # No cap where the command never had one (the shared parts have no bounds of their own).
    cfg = GuidedBuildConfig(num_inference_steps=5000, guidance_scale=150.0)
    assert (cfg.num_inference_steps, cfg.guidance_scale) == (5000, 150.0)


def test_train_config_reads_its_shared_keys_directly(tmp_path) -> None:
    cfg = TrainConfig(activations=str(tmp_path), out=str(tmp_path / "o"), lr=1e-3, epochs=2,
                      topk="token", dead_tokens=7, batch_size=16)  # fmt: skip
    assert (cfg.lr, cfg.epochs, cfg.topk, cfg.dead_tokens, cfg.batch_size) == (
        1e-3,
        2,
        "token",
        7,
        16,
    )
    data = cfg.to_dict()
    assert {k: data[k] for k in ("lr", "epochs", "topk", "dead_tokens", "batch_size")} == {
        "lr": 1e-3,
        "epochs": 2,
        "topk": "token",
        "dead_tokens": 7,
        "batch_size": 16,
    }
    with pytest.raises(ConfigError, match="^epochs: got 100001; must be <= 100000$"):
        cfg.replace(epochs=100_001)
