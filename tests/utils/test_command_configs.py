"""The settings of ``saeuron tune``, ``ui``, ``bench perf`` and ``train``: every command
accepts the keys and flags it always did, with the same defaults, help text and required
flags, however its config is composed of shared parts."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from saeuron.cli.main import build_parser
from saeuron.eval.tune_config import TuneConfig
from saeuron.perf.runner import PerfConfig
from saeuron.training.supervised_config import SupervisedTrainConfig
from saeuron.training.train_config import TrainConfig
from saeuron.ui.config import UiConfig
from saeuron.utils.config import Config, ConfigError

CONFIGS: dict[str, type[Config]] = {
    cls.__name__: cls
    for cls in (TuneConfig, UiConfig, PerfConfig, SupervisedTrainConfig, TrainConfig)
}
# What each config needs to be built: its keys without a default.
REQUIRED: dict[str, dict[str, Any]] = {
    "TuneConfig": {"concept": "moon", "out": "recipe.json"},
    "UiConfig": {},
    "PerfConfig": {},
    "SupervisedTrainConfig": {
        "activations": "acts",
        "labels": "labels.csv",
        "out": "sae",
        "init_sae": "init",
    },
    "TrainConfig": {"activations": "acts", "out": "sae"},
}

# The public contract: each config's keys (JSON, Python keywords) in order, what it holds
# when given only its required keys, and, per command, each option's flag, help text (with
# its bounds and default) and whether it is required.
KEYS: dict[str, list[str]] = {
    "TuneConfig": [
        "concept",
        "out",
        "model",
        "trials",
        "prompt_set",
        "judge",
        "judge_options",
        "saes",
        "stats",
        "site_sets",
        "rules",
        "taus",
        "strengths",
        "ratios",
        "windows",
        "halves",
        "sampler",
        "enqueue",
        "targets",
        "weights",
        "storage",
        "study",
        "seed",
        "num_inference_steps",
        "guidance_scale",
        "batch_size",
        "device",
        "heldout",
        "attack_prompts",
        "attack_budget",
        "attack_target",
    ],
    "UiConfig": [
        "model",
        "sae",
        "hookpoint",
        "recipe",
        "host",
        "port",
        "device",
        "steps",
        "guidance_scale",
        "max_steps",
        "max_prompt_chars",
        "max_concept_chars",
        "max_batch",
        "max_concepts",
        "queue_size",
        "max_multiplier",
        "feature_images",
    ],
    "PerfConfig": ["only", "quick", "device", "out"],
    "SupervisedTrainConfig": [
        "labels",
        "init_sae",
        "activations",
        "out",
        "bce",
        "corr",
        "l1",
        "supervised_lr",
        "batch_images",
        "max_epochs",
        "patience",
        "seed",
        "device",
    ],
    "TrainConfig": [
        "activations",
        "out",
        "d_in",
        "expansion_factor",
        "num_latents",
        "k",
        "normalize_decoder",
        "batch_topk",
        "input_unit_norm",
        "multi_topk",
        "sample_topk",
        "topk",
        "lr",
        "batch_size",
        "epochs",
        "auxk_alpha",
        "dead_tokens",
        "grad_clip",
        "heldout_fraction",
        "seed",
        "device",
        "shuffle_shards",
        "resume",
    ],
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "TuneConfig": {
        "concept": "moon",
        "out": "recipe.json",
        "model": "minicanvas",
        "trials": 40,
        "prompt_set": None,
        "judge": None,
        "judge_options": {},
        "saes": None,
        "stats": None,
        "site_sets": [],
        "rules": ["ablate", "anchor"],
        "taus": [5, 10, 20],
        "strengths": [],
        "ratios": [0.3, 0.5],
        "windows": ["all"],
        "halves": ["cond"],
        "sampler": "tpe",
        "enqueue": None,
        "targets": {},
        "weights": {},
        "storage": None,
        "study": None,
        "seed": 0,
        "num_inference_steps": None,
        "guidance_scale": None,
        "batch_size": 50,
        "device": None,
        "heldout": True,
        "attack_prompts": 0,
        "attack_budget": "quick",
        "attack_target": 0.8,
    },
    "UiConfig": {
        "model": "minicanvas",
        "sae": None,
        "hookpoint": None,
        "recipe": None,
        "host": "127.0.0.1",
        "port": 7860,
        "device": None,
        "steps": 20,
        "guidance_scale": 7.5,
        "max_steps": 50,
        "max_prompt_chars": 200,
        "max_concept_chars": 60,
        "max_batch": 4,
        "max_concepts": 4,
        "queue_size": 64,
        "max_multiplier": 100.0,
        "feature_images": 20,
    },
    "PerfConfig": {
        "only": ["erase", "compile", "features", "training", "capture", "profile"],
        "quick": False,
        "device": None,
        "out": "benchmarks/results",
    },
    "SupervisedTrainConfig": {
        "activations": "acts",
        "labels": "labels.csv",
        "out": "sae",
        "init_sae": "init",
        "bce": 3.0,
        "corr": 0.1,
        "l1": 0.01,
        "supervised_lr": 5e-06,
        "batch_images": 128,
        "max_epochs": 50,
        "patience": 3,
        "seed": 0,
        "device": None,
    },
    "TrainConfig": {
        "activations": "acts",
        "out": "sae",
        "d_in": None,
        "expansion_factor": 16,
        "num_latents": 0,
        "k": 32,
        "normalize_decoder": True,
        "batch_topk": True,
        "input_unit_norm": False,
        "multi_topk": False,
        "sample_topk": False,
        "topk": "batch",
        "lr": 0.0004,
        "batch_size": 4096,
        "epochs": 5,
        "auxk_alpha": 0.03125,
        "dead_tokens": 10000000,
        "grad_clip": 1.0,
        "heldout_fraction": 0.05,
        "seed": 0,
        "device": None,
        "shuffle_shards": 2,
        "resume": True,
    },
}
OPTIONS: dict[tuple[str, ...], dict[str, tuple[str, str, bool]]] = {
    ("tune",): {
        "concept": ("--concept", "the concept to erase (a member of the prompt set)", True),
        "out": ("--out", "the recipe to write (NAME.json); trials and plot go beside it", True),
        "model": (
            "--model",
            "model id, local folder, or a bundled name (default: minicanvas)",
            False,
        ),
        "trials": (
            "--trials",
            "complete trials the study should hold (>= 1 and <= 100000; default: 40)",
            False,
        ),
        "prompt_set": ("--prompt-set", "prompt-set file; default: the bundle's", False),
        "judge": (
            "--judge",
            "judge name (minicanvas, unlearncanvas, clip, nudenet) or module:Class "
            "(from the command line or Python only); default: the bundle's",
            False,
        ),
        "judge_options": (
            "--judge-options",
            'keyword arguments of the judge (JSON), e.g. {"clip_model": '
            '"PATH"} or {"style_classifier": "style50.pth", "trust_pickle": '
            "true} (default: {})",
            False,
        ),
        "saes": (
            "--saes",
            "folder with one SAE sub-folder per hookpoint; default: the bundle's",
            False,
        ),
        "stats": (
            "--stats",
            "folder with <hookpoint>/<concept> statistics of every prompt-set concept; "
            "default: the bundle's, else collected from the prompt set beside --out",
            False,
        ),
        "site_sets": (
            "--site-sets",
            "site sets to choose from ('A+B' edits at both); default: the bundle's "
            "for the concept's kind, else every site with an SAE and statistics, "
            "alone",
            False,
        ),
        "rules": ("--rules", "rules to try (default: ablate,anchor)", False),
        "taus": ("--taus", "latents per step to try (default: 5,10,20)", False),
        "strengths": (
            "--strengths",
            "strengths to try, in place of each rule's range: e.g. the published "
            "grid's --strengths=-1,-5,-10,-15,-20,-25,-30 (default: the range)",
            False,
        ),
        "ratios": (
            "--ratios",
            "specificity filters to try (max_other_ratio) (default: 0.3,0.5)",
            False,
        ),
        "windows": ("--windows", "windows to try: all, 0:0.5, 0.5:1 (default: all)", False),
        "halves": ("--halves", "CFG rows to try: cond, both (default: cond)", False),
        "sampler": (
            "--sampler",
            "tpe: Optuna's TPE search for --trials trials; grid: every combination "
            "of --site-sets, --rules, --strengths, --taus, --ratios, --windows and "
            "--halves once (--trials is then the grid's size) (one of tpe, grid; "
            "default: tpe)",
            False,
        ),
        "enqueue": (
            "--enqueue",
            "a setting (JSON object of trial parameters) or a JSON list of them, "
            "tried first: e.g. a known good one",
            False,
        ),
        "targets": ("--targets", "UA/IRA/CRA targets; default: the bundle's or 0.9", False),
        "weights": ("--weights", "UA/IRA/CRA weights of the shortfall (default 1)", False),
        "storage": (
            "--storage",
            "Optuna storage URL; default: sqlite beside the recipe (resumable)",
            False,
        ),
        "study": ("--study", "study name; default: NAME of --out", False),
        "seed": ("--seed", "sampler seed (>= 0 and <= 4294967295; default: 0)", False),
        "num_inference_steps": (
            "--num-inference-steps",
            "sampling steps; default: model's (>= 1)",
            False,
        ),
        "guidance_scale": ("--guidance-scale", "CFG scale; default: the model's", False),
        "batch_size": (
            "--batch-size", "images per pipeline call (>= 1 and <= 16777216; default: 50)", False
        ),
        "device": ("--device", "cpu, cuda, cuda:N or mps; default: best available", False),
        "heldout": (
            "--heldout",
            "score the chosen setting on the held-out phrasings too (default: True)",
            False,
        ),
        "attack_prompts": (
            "--attack-prompts",
            "attack every trial that meets the targets with UnlearnDiffAtk on "
            "this many of its target prompts (first seed); UA after the "
            "attack then counts in the objective against --attack-target (0: "
            "no attack) (>= 0 and <= 1000; default: 0)",
            False,
        ),
        "attack_budget": (
            "--attack-budget",
            "the attack's search budget (one of quick, published; default: quick)",
            False,
        ),
        "attack_target": (
            "--attack-target",
            "UA after the attack aimed for (>= 0 and <= 1; default: 0.8)",
            False,
        ),
    },
    ("ui",): {
        "model": (
            "--model",
            "model id, local folder, or a bundled name (default: minicanvas)",
            False,
        ),
        "sae": ("--sae", "SAE repo id or folder; default: the model's known SAE", False),
        "hookpoint": (
            "--hookpoint",
            "module the SAE reads; default: per concept (bundled) or the SAE's own",
            False,
        ),
        "recipe": (
            "--recipe",
            "an erasure recipe (file, folder of recipes, or hub id), or 'bundled' for "
            "the model bundle's recipes: one slider per concept, 0 off, 1 its tuned "
            "strength",
            False,
        ),
        "host": (
            "--host",
            "address to serve on (0.0.0.0 exposes it to the network) (default: 127.0.0.1)",
            False,
        ),
        "port": ("--port", "port to serve on (>= 1 and <= 65535; default: 7860)", False),
        "device": ("--device", "cpu, cuda, cuda:N or mps; default: the best available", False),
        "steps": (
            "--steps",
            "denoising steps shown when the page opens (>= 1 and <= 1000; default: 20)",
            False,
        ),
        "guidance_scale": (
            "--guidance-scale",
            "CFG scale shown when the page opens (>= 1 and <= 30; default: 7.5)",
            False,
        ),
        "max_steps": (
            "--max-steps",
            "largest number of steps a request may ask for (>= 1 and <= 1000; default: 50)",
            False,
        ),
        "max_prompt_chars": (
            "--max-prompt-chars",
            "longest prompt accepted, in characters (>= 1 and <= 10000; default: 200)",
            False,
        ),
        "max_concept_chars": (
            "--max-concept-chars",
            "longest free-text concept accepted, in characters (>= 1 and <= 1000; default: 60)",
            False,
        ),
        "max_batch": ("--max-batch", "most images per request (>= 1 and <= 64; default: 4)", False),
        "max_concepts": (
            "--max-concepts",
            "most concepts stacked at once (>= 1 and <= 16; default: 4)",
            False,
        ),
        "queue_size": (
            "--queue-size",
            "requests that may wait for the one pipeline; more are refused until "
            "the queue drains, so memory stays bounded however many people use the "
            "page (>= 1 and <= 10000; default: 64)",
            False,
        ),
        "max_multiplier": (
            "--max-multiplier",
            "the multiplier sliders run from -MAX_MULTIPLIER to +MAX_MULTIPLIER "
            "(> 0 and <= 1000; default: 100.0)",
            False,
        ),
        "feature_images": (
            "--feature-images",
            "images sampled to find the features of a free-text concept "
            "(shortcut method) (>= 1 and <= 1000; default: 20)",
            False,
        ),
    },
    ("bench", "perf"): {
        "only": (
            "--only",
            "benchmarks to run: erase, compile, features, training, capture, profile",
            False,
        ),
        "quick": (
            "--quick",
            "small sizes, for a smoke test (numbers not comparable) (default: False)",
            False,
        ),
        "device": (
            "--device",
            "device of the erase and training benchmarks; default: the CPU, "
            "and CUDA too when there is one (both reported)",
            False,
        ),
        "out": ("--out", "folder for perf.json and perf.md (default: benchmarks/results)", False),
    },
    ("train",): {
        "activations": (
            "--activations",
            "capture folder written by `saeuron cache` (manifest.json): a local "
            "path or an fsspec URL (s3://..., gs://..., hf://...); shards are "
            "streamed, one at a time",
            True,
        ),
        "out": ("--out", "output folder; the SAE goes to OUT/<hookpoint>/", True),
        "expansion_factor": (
            "--expansion-factor",
            "num_latents = d_in x expansion_factor when num_latents is 0 (>= 1; default: 16)",
            False,
        ),
        "num_latents": (
            "--num-latents",
            "number of latents; 0 derives it from expansion_factor (>= 0; default: 0)",
            False,
        ),
        "k": ("--k", "active latents per token (>= 1; default: 32)", False),
        "normalize_decoder": (
            "--normalize-decoder",
            "keep decoder rows at unit L2 norm (default: True)",
            False,
        ),
        "input_unit_norm": (
            "--input-unit-norm",
            "standardise each token before encoding (the paper: off) (default: False)",
            False,
        ),
        "topk": (
            "--topk",
            "'batch': BatchTopK in training, k x tokens over the batch (the paper's); "
            "'token': k per token, the form used at inference and by eai-sparsify (one "
            "of batch, token; default: batch)",
            False,
        ),
        "lr": (
            "--lr",
            "Adam learning rate, decayed linearly to 0 (> 0 and <= 1; default: 0.0004)",
            False,
        ),
        "batch_size": (
            "--batch-size",
            "tokens per optimiser step (>= 1 and <= 16777216; default: 4096)",
            False,
        ),
        "epochs": (
            "--epochs",
            "passes over the training shards (>= 1 and <= 100000; default: 5)",
            False,
        ),
        "auxk_alpha": (
            "--auxk-alpha",
            "weight of the AuxK loss on dead latents (>= 0; default: 0.03125)",
            False,
        ),
        "dead_tokens": (
            "--dead-tokens",
            "a latent silent for this many tokens is dead (>= 1; default: 10000000)",
            False,
        ),
        "grad_clip": (
            "--grad-clip",
            "max global gradient L2 norm; 0 disables clipping (>= 0; default: 1.0)",
            False,
        ),
        "heldout_fraction": (
            "--heldout-fraction",
            "share of shards (the last) kept for held-out FVU (>= 0 and < 1; default: 0.05)",
            False,
        ),
        "seed": (
            "--seed",
            "seed of the SAE initialisation and the data shuffle (>= 0 and <= 9223372036854775807; "
            "default: 0)",
            False,
        ),
        "device": ("--device", "torch device; default: CUDA, else MPS, else CPU", False),
        "shuffle_shards": (
            "--shuffle-shards",
            "shards shuffled together; under N processes each holds about "
            "shuffle_shards/N of them, so a multiple of N keeps every "
            "process busy (>= 1; default: 2)",
            False,
        ),
        "resume": (
            "--resume",
            "continue from the last finished epoch found in OUT (default: True)",
            False,
        ),
        "supervised": ("--supervised", "SAEmnesia's supervised fine-tune", False),
        "labels": (
            "--labels",
            "CSV, one row per captured prompt: an optional 'prompt' column and one "
            "column per kind (object, style, ...) naming the prompt's concept",
            False,
        ),
        "bce": ("--bce", "weight of the concept BCE (>= 0 and <= 1000; default: 3.0)", False),
        "corr": (
            "--corr",
            "weight of the object/style squared correlation (>= 0 and <= 1000; default: 0.1)",
            False,
        ),
        "l1": ("--l1", "weight of the L1 penalty (>= 0 and <= 1000; default: 0.01)", False),
        "supervised_lr": (
            "--supervised-lr",
            "Adam learning rate (the paper's 5e-6) (> 0 and <= 1; default: 5e-06)",
            False,
        ),
        "batch_images": (
            "--batch-images",
            "images per step (the paper's 128) (>= 1 and <= 1000000; default: 128)",
            False,
        ),
        "max_epochs": (
            "--max-epochs",
            "at most this many passes (>= 1 and <= 1000000; default: 50)",
            False,
        ),
        "patience": (
            "--patience",
            "stop after this many epochs without held-out gain (>= 1 and <= 1000000; default: 3)",
            False,
        ),
        "init_sae": (
            "--init-sae",
            "unsupervised SAE to start from; default: train one first",
            False,
        ),
    },
}


def command_parser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser(path[0])
    for name in path:
        parser = parser._subparsers._group_actions[0].choices[name]
    return parser


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keys_and_defaults_are_the_commands(name: str) -> None:
    cls = CONFIGS[name]
    assert cls.config_keys() == KEYS[name]
    assert cls(**REQUIRED[name]).to_dict() == DEFAULTS[name]
    assert cls.from_dict(REQUIRED[name]).to_dict() == DEFAULTS[name]


@pytest.mark.parametrize("command", sorted(OPTIONS))
def test_flags_help_and_required_are_the_commands(command: tuple[str, ...]) -> None:
    parser = command_parser(*command)
    shown = {
        a.dest: (a.option_strings[0] if a.option_strings else a.dest, a.help, a.required)
        for a in parser._actions
        if a.dest != "help" and a.help != argparse.SUPPRESS
    }
    assert shown == OPTIONS[command]


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [
        ("TuneConfig", {"seed": 2**32}, "seed: got 4294967296; must be <= 4294967295"),
        ("TuneConfig", {"seed": -1}, "seed: got -1; must be >= 0"),
        ("TuneConfig", {"model": None}, "model: must not be null"),
        ("TuneConfig", {"devise": "cpu"}, "devise: unknown key (did you mean 'device'?)"),
        ("UiConfig", {"guidance_scale": 0.5}, "guidance_scale: got 0.5; must be >= 1"),
        ("UiConfig", {"steps": 1001}, "steps: got 1001; must be <= 1000"),
        ("UiConfig", {"steps": 60}, "steps: got 60; must be <= 50"),
        ("UiConfig", {"model": None}, "model: must not be null"),
        ("UiConfig", {"device": "gpu"}, "device: got 'gpu'"),
        ("PerfConfig", {"out": None}, "out: must not be null"),
        ("PerfConfig", {"quick": "maybe"}, "quick: got 'maybe'; expected bool"),
        ("PerfConfig", {"device": "gpu"}, "device: got 'gpu'"),
        ("SupervisedTrainConfig", {"max_epochs": 0}, "max_epochs: got 0; must be >= 1"),
        ("SupervisedTrainConfig", {"patience": 2_000_000}, "patience: got 2000000; must be <= "),
        ("SupervisedTrainConfig", {"seed": 2**63}, "seed: got 9223372036854775808; must be <= "),
        ("TrainConfig", {"device": "gpu"}, "device: got 'gpu'"),
    ],
)
def test_each_command_keeps_its_bounds_and_messages(
    name: str, data: dict[str, Any], error: str
) -> None:
    with pytest.raises(ConfigError) as err:
        CONFIGS[name].from_dict({**REQUIRED[name], **data})
    assert str(err.value).startswith(error), str(err.value)
    assert "\n" not in str(err.value)


def test_shared_keys_read_and_write_through_their_parts() -> None:
    cfg = TuneConfig(concept="moon", out="recipe.json", seed=7, device="cpu")
    assert (cfg.seed, cfg.device, cfg.model) == (7, "cpu", "minicanvas")
    cfg.seed = 8
    assert cfg.to_dict()["seed"] == 8
    assert cfg.resolved_model.name == "minicanvas"
    ui = UiConfig(steps=30, guidance_scale=5.0)
    assert ui.to_dict()["steps"] == 30 and ui.guidance_scale == 5.0
    assert PerfConfig(quick=True).to_dict()["quick"] is True
