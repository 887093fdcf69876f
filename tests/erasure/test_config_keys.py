"""The erasure configs' settings: each accepts the keys and flags it always did, with the
same defaults, help text and requirements, however it is composed of shared parts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

import saeuron
from saeuron.erasure.concepts.build_config import ConceptBuildConfig, default_cache_dir
from saeuron.erasure.erase_config import EraseConfig
from saeuron.erasure.technique_config import SAeUronConfig
from saeuron.eval.techniques import (
    NegativePromptConfig,
    PlainConfig,
    PluginConfig,
    SAEmnesiaConfig,
)
from saeuron.perf.blocks import BlockSweepConfig
from saeuron.training.capture_config import CacheConfig
from saeuron.utils.config import Config, ConfigError

CONFIGS: dict[str, type[Config]] = {
    cls.__name__: cls
    for cls in (
        EraseConfig, SAeUronConfig, ConceptBuildConfig, SAEmnesiaConfig, PlainConfig,
        NegativePromptConfig, PluginConfig, BlockSweepConfig, CacheConfig,
    )
}  # fmt: skip

# The public contract of each config: its keys (JSON, Python keywords, flags), in order.
KEYS: dict[str, list[str]] = {
    "EraseConfig": [
        "multiplier",
        "multipliers",
        "guidance_half",
        "error_term",
        "edit_path",
        "activation_site",
        "hookpoint",
        "rule",
        "window",
    ],
    "SAeUronConfig": [
        "erase_concept",
        "recipe",
        "preset",
        "multiplier",
        "model",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
        "sae",
        "hookpoint",
        "features",
        "guidance_half",
        "error_term",
        "rule",
        "window",
        "feature_method",
        "num_features",
    ],
    "ConceptBuildConfig": [
        "concept",
        "model",
        "sae",
        "hookpoint",
        "method",
        "prompts",
        "num_prompts",
        "others",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
        "percentile",
        "tau",
        "threshold_concepts",
        "activity_filter",
        "min_active",
        "max_active",
        "max_other_ratio",
        "active_gate",
        "shortcut_step",
        "shortcut_images",
        "guidance_half",
        "cache_dir",
        "out",
    ],
    "SAEmnesiaConfig": [
        "erase_concept",
        "model",
        "sae",
        "hookpoint",
        "multiplier",
        "stats",
        "percentile",
        "params",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
        "guidance_half",
        "error_term",
    ],
    "PlainConfig": [
        "erase_concept",
        "model",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
    ],
    "NegativePromptConfig": [
        "erase_concept",
        "model",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
    ],
    "PluginConfig": ["target", "erase_concept", "model", "options"],
    "BlockSweepConfig": [
        "model",
        "concept",
        "blocks",
        "train_prompts",
        "eval_prompts",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
        "k",
        "expansion_factor",
        "epochs",
        "sae_batch_size",
        "max_shard_mb",
        "tau",
        "multiplier",
        "guidance_half",
        "out",
    ],
    "CacheConfig": [
        "model",
        "hookpoint",
        "prompts",
        "out",
        "num_inference_steps",
        "guidance_scale",
        "use_fp16",
        "device",
        "scheduler",
        "seed",
        "batch_size",
        "height",
        "width",
        "steps",
        "guidance_half",
        "tokens_per_image",
        "dtype",
        "max_shard_mb",
        "activation_site",
        "limit",
    ],
}

# What each runs with when given only what it requires (after its __post_init__).
DEFAULTS: dict[str, dict[str, Any]] = {
    "EraseConfig": {
        "multiplier": -1.0,
        "multipliers": {},
        "guidance_half": "cond",
        "error_term": "exact",
        "edit_path": "auto",
        "activation_site": None,
        "hookpoint": None,
        "rule": "scale",
        "window": None,
    },
    "SAeUronConfig": {
        "erase_concept": "nudity",
        "recipe": None,
        "preset": "recipe",
        "multiplier": None,
        "model": "CompVis/stable-diffusion-v1-4",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
        "sae": None,
        "hookpoint": None,
        "features": None,
        "guidance_half": "cond",
        "error_term": "exact",
        "rule": "scale",
        "window": None,
        "feature_method": "shortcut",
        "num_features": None,
    },
    "ConceptBuildConfig": {
        "concept": "moon",
        "model": "minicanvas",
        "hookpoint": "unet.up_blocks.1.attentions.1",
        "method": "contrastive",
        "prompts": None,
        "num_prompts": 20,
        "others": None,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
        "percentile": 99.999,
        "tau": None,
        "threshold_concepts": 20,
        "activity_filter": False,
        "min_active": 0.01,
        "max_active": 0.99,
        "max_other_ratio": None,
        "active_gate": None,
        "shortcut_step": 10,
        "shortcut_images": 20,
        "guidance_half": "cond",
        "out": None,
    },
    "SAEmnesiaConfig": {
        "erase_concept": "moon",
        "model": "minicanvas",
        "sae": str(Path(saeuron.__file__).parent / "data/minicanvas/supervised/saes"),
        "hookpoint": "unet.up_blocks.1.attentions.1",
        "multiplier": None,
        "stats": None,
        "percentile": None,
        "params": None,
        "num_inference_steps": None,
        "guidance_scale": None,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
        "guidance_half": "cond",
        "error_term": "exact",
    },
    "PlainConfig": {
        "erase_concept": None,
        "model": "CompVis/stable-diffusion-v1-4",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
    },
    "NegativePromptConfig": {
        "erase_concept": "cat",
        "model": "CompVis/stable-diffusion-v1-4",
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
    },
    "PluginConfig": {"target": "x:y", "erase_concept": None, "model": None, "options": {}},
    "BlockSweepConfig": {
        "model": "minicanvas",
        "concept": "a cat",
        "blocks": None,
        "train_prompts": 16,
        "eval_prompts": 4,
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
        "expansion_factor": 4,
        "k": 8,
        "epochs": 2,
        "sae_batch_size": 256,
        "max_shard_mb": 256.0,
        "tau": 2,
        "multiplier": -20.0,
        "guidance_half": "cond",
        "out": "TMP/o",
    },
    "CacheConfig": {
        "model": "minicanvas",
        "hookpoint": "unet.up_blocks.1.attentions.1",
        "prompts": "TMP/p.txt",
        "out": "TMP/o",
        "num_inference_steps": 20,
        "guidance_scale": 7.5,
        "use_fp16": True,
        "device": None,
        "scheduler": "ddim",
        "seed": 0,
        "batch_size": 4,
        "height": None,
        "width": None,
        "steps": "all",
        "guidance_half": "cond",
        "tokens_per_image": 0,
        "dtype": "float16",
        "max_shard_mb": 256.0,
        "activation_site": "output",
        "limit": None,
    },
}

# What --help says of each flag.
HELP: dict[str, dict[str, str | None]] = {
    "EraseConfig": {
        "multiplier": "gamma: scale of the edited latents; negative erases, positive "
        "amplifies (>= -1000 and <= 1000; default: -1.0)",
        "multipliers": "gamma per concept name, overriding multiplier for those "
        "concepts (default: {})",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "'cond': edit the conditional half of the CFG batch; 'both': "
        "every row (the published code). Without CFG the whole batch "
        "is conditional either way (one of cond, both; default: "
        "cond)",
        "error_term": "'exact': x + (a' - a) W_dec; 'paper': the published x_hat' + "
        "(x_hat - x) (one of exact, paper; default: exact)",
        "edit_path": "'sparse': encode only candidate tokens (fast on a CPU, syncs "
        "with a GPU); 'dense': one masked edit of every token, no host "
        "sync, compile-friendly; 'auto': dense on GPUs and under "
        "torch.compile, sparse on the CPU. Both give the same edit (one "
        "of auto, sparse, dense; default: auto)",
        "activation_site": "'output', 'update' (output - input) or 'guidance' "
        "(conditional minus unconditional row under CFG); default: "
        "what the SAE was trained on (one of output, update, "
        "guidance)",
        "hookpoint": "module to edit; default: the SAE's, else the concepts' hookpoint",
        "rule": "'scale': the published a <- gamma*mu*a; 'ablate': a <- r + gamma*(a "
        "- r) with r the latent's mean on other concepts; 'anchor': ablate "
        "and write in the features' anchor concept at the token's strength; "
        "'project': scale the input's component along the concept's decoder "
        "directions by gamma (one of scale, ablate, anchor, project; default: "
        "scale)",
        "window": "edit only at schedule positions start..end (0 = first step, 1 = "
        "last), e.g. 0,0.5; default: every step",
    },
    "SAeUronConfig": {
        "erase_concept": "the concept to suppress, any phrase; several: "
        "comma-separated ('moon,checkered'); default: every "
        "concept of --recipe, else 'nudity'",
        "recipe": "an erasure recipe (file, folder with recipe.json, or hub id): "
        "erase its concepts with its edits, sites and strengths",
        "preset": "'recipe': on a bundled model, each concept's tuned recipe when "
        "the bundle has one and no SAE, hookpoint, features, multiplier, "
        "rule or window is named; 'paper': the published SAeUron method "
        "(one of recipe, paper; default: recipe)",
        "multiplier": "gamma, the scale of the concept's latents: negative "
        "suppresses, positive amplifies; default: the tuned value of "
        "a bundled concept, else -20.0 (>= -1000 and <= 1000)",
        "model": "model id, local folder, or a bundled name (default: "
        "CompVis/stable-diffusion-v1-4)",
        "num_inference_steps": "denoising steps; default: the model's (MiniCanvas "
        "20, SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); default: "
        "the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU always "
        "runs float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, "
        "spacing, offset), as the published SAeUron code samples; "
        "'pipeline': the model's own scheduler (SD 1.x: PNDM, SDXL: "
        "Euler, SDXL-Turbo: Euler ancestral). Flow-matching models "
        "keep theirs (one of ddim, pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the model's "
        "(>= 8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
        "sae": "SAE repo id, folder or bundled name; default: the known SAE of the model",
        "hookpoint": "module the SAE reads; default: where the bundle keeps the "
        "concept, else the model's known one",
        "features": "precomputed concept features (NAME.safetensors + NAME.json) to use",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "'cond' edits the conditional half; 'both' every row (one "
        "of cond, both; default: cond)",
        "error_term": "'exact' (identity when nothing is edited) or 'paper' (one of "
        "exact, paper; default: exact)",
        "rule": "how a concept's latents are edited: 'scale' (published: a <- "
        "gamma*mu*a), 'ablate' (a <- r + gamma*(a - r), r its mean on other "
        "concepts), 'anchor', 'project' (one of scale, ablate, anchor, "
        "project; default: scale)",
        "window": "edit only at schedule positions START,END (0 = first step, 1 = "
        "last); default: every step",
        "feature_method": "how features of a new concept are found: 'shortcut' (20 "
        "images, step 10) or 'contrastive' (scores against "
        "neutral prompts at every step) (one of shortcut, "
        "contrastive; default: shortcut)",
        "num_features": "latents per step kept for a new concept; default: 10 "
        "(shortcut), the percentile's 1 (contrastive), as `saeuron "
        "concept build` (>= 1 and <= 100000)",
    },
    "ConceptBuildConfig": {
        "concept": "the concept to find, e.g. 'Van Gogh' or 'cat'",
        "model": "diffusion model: a bundled name, tiny-sd, a folder or a hub id",
        "sae": "SAE folder, Hugging Face repo id or bundled name; default: the "
        "model's own (a bundle's, or the published SAE of a known "
        "model)",
        "hookpoint": "module the SAE reads, e.g. "
        "unet.up_blocks.1.attentions.1; default: where the bundle "
        "keeps the concept, the model's known one, else the SAE's "
        "own",
        "method": "'contrastive': concept vs other concepts at every step "
        "(SAeUron); 'shortcut': top latents of the concept's own "
        "images at one step (one of contrastive, shortcut; default: "
        "contrastive)",
        "prompts": "file with the concept's prompts, one a line (all are "
        "used); default: num_prompts templated prompts "
        "(contrastive) or the concept itself (shortcut)",
        "num_prompts": "templated prompts of the concept when no file is given "
        "(>= 1 and <= 100000; default: 20)",
        "others": "prompts of the other concepts: a text file (one concept), a "
        "JSON file {concept: [prompts]}, or 'neutral' (bundled set); "
        "default: 'neutral' for contrastive, none for shortcut "
        "(threshold 0)",
        "num_inference_steps": "denoising steps; default: the model's "
        "(MiniCanvas 20, SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); "
        "default: the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU "
        "always runs float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, "
        "spacing, offset), as the published SAeUron code samples; "
        "'pipeline': the model's own scheduler (SD 1.x: PNDM, "
        "SDXL: Euler, SDXL-Turbo: Euler ancestral). Flow-matching "
        "models keep theirs (one of ddim, pipeline; default: "
        "ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the "
        "model's (>= 8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
        "percentile": "contrastive: keep latents scoring strictly above this "
        "percentile (20,480 latents: 1) (> 0 and < 100; default: "
        "99.999)",
        "tau": "keep the top tau latents per step; default: the percentile "
        "(contrastive), 10 (shortcut) (>= 1 and <= 100000)",
        "threshold_concepts": "contrastive: a latent's threshold averages its "
        "mean over at least this many concepts; a "
        "smaller 'others' set stands in for the missing "
        "ones (docs/method.md, section 4). 1 (or null): "
        "the plain mean over the concepts given (>= 1 "
        "and <= 100000; default: 20)",
        "activity_filter": "drop latents active on too few or too many of the "
        "concept's tokens (default: False)",
        "min_active": "activity filter: lowest share of active tokens (>= 0 "
        "and <= 1; default: 0.01)",
        "max_active": "activity filter: highest share of active tokens (>= 0 "
        "and <= 1; default: 0.99)",
        "max_other_ratio": "drop latents whose mean on any one other concept "
        "exceeds this share of their mean on the concept "
        "(e.g. 0.5); default: no such filter (> 0)",
        "active_gate": "raise each threshold to at least this share of the "
        "latent's mean activation where it fires on the concept "
        "(e.g. 0.5); default: the paper's threshold alone (>= 0 "
        "and <= 1000)",
        "shortcut_step": "shortcut: the denoising step whose activations "
        "count; default: 10, or the last step of a shorter "
        "schedule (>= 0)",
        "shortcut_images": "shortcut: images generated from the concept's name "
        "(>= 1 and <= 100000; default: 20)",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "'cond': read the conditional half of the CFG batch; "
        "'both': every row (one of cond, both; default: cond)",
        "cache_dir": "statistics cache; default $SAEURON_CACHE/concepts or "
        "~/.cache/saeuron/concepts",
        "out": "write the features to OUT.safetensors + OUT.json",
    },
    "SAEmnesiaConfig": {
        "erase_concept": "one of the supervised SAE's concepts",
        "model": "model id, local folder, or a bundled name (default: "
        "CompVis/stable-diffusion-v1-4)",
        "sae": "supervised SAE folder or hub repo (one sub-folder per hookpoint); "
        "default: the bundled model's supervised SAE",
        "hookpoint": "module the SAE reads; default: the bundled one",
        "multiplier": "gamma, the only knob; default: the concept's tuned value, "
        "else -20 (>= -1000 and <= 1000)",
        "stats": "per-class statistics converted from SAEmnesia's "
        "cls_latents_dict (saeuron convert stats): the concept's latents "
        "are then picked per step as SAEmnesia's inference picks them, "
        "from the published SAE (sae=...)",
        "percentile": "with stats: keep latents above this percentile of the "
        "step's scores; default: the class's in params, else 99.999 "
        "(one latent per step) (> 0 and < 100)",
        "params": "with stats: per-class percentile and multiplier as JSON "
        "(saeuron convert params of SAEmnesia's class_params.pth)",
        "num_inference_steps": "denoising steps; default: the model's (MiniCanvas "
        "20, SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); "
        "default: the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU always "
        "runs float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, "
        "spacing, offset), as the published SAeUron code samples; "
        "'pipeline': the model's own scheduler (SD 1.x: PNDM, SDXL: "
        "Euler, SDXL-Turbo: Euler ancestral). Flow-matching models "
        "keep theirs (one of ddim, pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the model's "
        "(>= 8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "'cond' edits the conditional half; 'both' every row "
        "(SAEmnesia's code) (one of cond, both; default: cond)",
        "error_term": "'exact' (identity when nothing is edited) or 'paper' "
        "(SAEmnesia's code) (one of exact, paper; default: exact)",
    },
    "PlainConfig": {
        "erase_concept": "the concept (the negative prompt; the metrics' default concept)",
        "model": "model id, local folder, or a bundled name (default: "
        "CompVis/stable-diffusion-v1-4)",
        "num_inference_steps": "denoising steps; default: the model's (MiniCanvas 20, "
        "SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); default: "
        "the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU always runs "
        "float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, spacing, "
        "offset), as the published SAeUron code samples; 'pipeline': the "
        "model's own scheduler (SD 1.x: PNDM, SDXL: Euler, SDXL-Turbo: "
        "Euler ancestral). Flow-matching models keep theirs (one of "
        "ddim, pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the model's (>= "
        "8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
    },
    "NegativePromptConfig": {
        "erase_concept": "the concept (the negative prompt; the metrics' default concept)",
        "model": "model id, local folder, or a bundled name (default: "
        "CompVis/stable-diffusion-v1-4)",
        "num_inference_steps": "denoising steps; default: the model's "
        "(MiniCanvas 20, SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); "
        "default: the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU "
        "always runs float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, "
        "spacing, offset), as the published SAeUron code "
        "samples; 'pipeline': the model's own scheduler (SD "
        "1.x: PNDM, SDXL: Euler, SDXL-Turbo: Euler ancestral). "
        "Flow-matching models keep theirs (one of ddim, "
        "pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the "
        "model's (>= 8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
    },
    "PluginConfig": {
        "target": "the technique's module:Class",
        "erase_concept": "the concept (the metrics' default)",
        "model": "the model it samples (informational)",
        "options": "every key of the technique's config block (default: {})",
    },
    "BlockSweepConfig": {
        "model": "pipeline: tiny-sd3, tiny-flux, tiny-pixart, a folder or a hub id",
        "concept": "the concept erased at every block (default: a cat)",
        "blocks": "hookpoints to compare; default: every block the denoiser lists",
        "train_prompts": "prompts of the concept, and as many neutral ones, "
        "captured (>= 2 and <= 10000; default: 16)",
        "eval_prompts": "held-out prompts of the concept, and as many neutral "
        "ones (>= 1 and <= 1000; default: 4)",
        "num_inference_steps": "denoising steps; default: the model's "
        "(MiniCanvas 20, SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); "
        "default: the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU always "
        "runs float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, "
        "spacing, offset), as the published SAeUron code samples; "
        "'pipeline': the model's own scheduler (SD 1.x: PNDM, SDXL: "
        "Euler, SDXL-Turbo: Euler ancestral). Flow-matching models "
        "keep theirs (one of ddim, pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the model's "
        "(>= 8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
        "expansion_factor": "SAE latents = width x this (>= 1 and <= 256; default: 4)",
        "k": "SAE active latents per token (>= 1; default: 8)",
        "epochs": "SAE training passes over the capture (>= 1 and <= 1000; default: 2)",
        "sae_batch_size": "SAE training tokens per step (>= 1; default: 256)",
        "max_shard_mb": "capture shard size in MiB; the SAE's held-out FVU needs "
        "2 shards or more (> 0; default: 256.0)",
        "tau": "features kept per step (>= 1 and <= 10000; default: 2)",
        "multiplier": "gamma of the erasure (>= -1000 and <= 1000; default: -20.0)",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "rows read and edited under CFG (see saeuron cache) "
        "(one of cond, both; default: cond)",
        "out": "folder for blocks.json, blocks.md, work (default: benchmarks/blocks)",
    },
    "CacheConfig": {
        "model": "pipeline to sample with: a bundled name (minicanvas), tiny-sd, "
        "tiny-sdxl, a local diffusers folder or a Hugging Face hub id",
        "hookpoint": "module whose activations are stored, e.g. unet.up_blocks.1.attentions.1",
        "prompts": "prompt file: .txt with one prompt per line (blank and '#' lines "
        "skipped) or .csv with a 'prompt' column; a prompt's index in this "
        "list is stored with its tokens",
        "out": "output folder for shards, plan.json and manifest.json: a local path "
        "or an fsspec URL (s3://bucket/acts, gs://..., hf://datasets/..., with "
        "the store's fsspec backend installed)",
        "num_inference_steps": "denoising steps; default: the model's (MiniCanvas 20, "
        "SD 50) (>= 1 and <= 1000)",
        "guidance_scale": "classifier-free guidance scale (<= 1: no CFG); default: "
        "the model's (>= 0 and <= 100)",
        "use_fp16": "half precision where it is fast (CUDA, MPS); the CPU always runs "
        "float32 (default: True)",
        "device": "cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU",
        "scheduler": "'ddim': DDIM on the model's own noise schedule (betas, spacing, "
        "offset), as the published SAeUron code samples; 'pipeline': the "
        "model's own scheduler (SD 1.x: PNDM, SDXL: Euler, SDXL-Turbo: "
        "Euler ancestral). Flow-matching models keep theirs (one of "
        "ddim, pipeline; default: ddim)",
        "seed": "prompt i samples with seed + i (>= 0 and <= 9223372036854775807; default: 0)",
        "batch_size": "prompts per pipeline call (>= 1 and <= 4096; default: 4)",
        "height": "image height in pixels, a multiple of 8; default: the model's (>= "
        "8 and <= 4096)",
        "width": "image width in pixels, a multiple of 8; default: the model's (>= 8 and <= 4096)",
        "steps": "denoising steps to record: 'all' or a comma list of indices and "
        "inclusive ranges into the scheduler's timesteps, e.g. '0,10,20-29' "
        "(default: all)",
        "cfg_half": "==SUPPRESS==",
        "guidance_half": "rows of a CFG batch to record: 'cond' (conditional half) or "
        "'both' (unconditional and conditional); without CFG every "
        "row is recorded (one of cond, both; default: cond)",
        "tokens_per_image": "0: every token; else a seeded random subsample of this "
        "many tokens per image and step (>= 0; default: 0)",
        "dtype": "storage dtype (one of float16, bfloat16, float32; default: float16)",
        "max_shard_mb": "upper bound on one shard's size in MiB (> 0; default: 256.0)",
        "activation_site": "'output': the module's output; 'update': output minus "
        "input (sdxl-unbox); 'guidance': the conditional minus the "
        "unconditional output under CFG (one of output, update, "
        "guidance; default: output)",
        "limit": "use only the first N prompts (>= 1)",
    },
}

# Flags argparse requires.
REQUIRED: dict[str, list[str]] = {
    "EraseConfig": [],
    "SAeUronConfig": [],
    "ConceptBuildConfig": ["concept", "model"],
    "SAEmnesiaConfig": ["erase_concept"],
    "PlainConfig": [],
    "NegativePromptConfig": [],
    "PluginConfig": ["target"],
    "BlockSweepConfig": ["model"],
    "CacheConfig": ["model", "hookpoint", "prompts", "out"],
}


def _required(name: str, tmp_path: Path) -> dict[str, Any]:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    return {
        "NegativePromptConfig": {"erase_concept": "cat"},
        "PluginConfig": {"target": "x:y"},
        "ConceptBuildConfig": {"concept": "moon", "model": "minicanvas"},
        "SAEmnesiaConfig": {"erase_concept": "moon", "model": "minicanvas"},
        "BlockSweepConfig": {"model": "minicanvas", "out": str(tmp_path / "o")},
        "CacheConfig": {
            "model": "minicanvas",
            "hookpoint": "unet.up_blocks.1.attentions.1",
            "prompts": str(prompts),
            "out": str(tmp_path / "o"),
        },
    }.get(name, {})


def _expected(name: str, tmp_path: Path) -> dict[str, Any]:
    text = json.dumps(DEFAULTS[name]).replace("TMP", str(tmp_path))
    return json.loads(text)


def _parser(cls: type[Config]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cls.add_arguments(parser)
    return parser


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_keys_and_defaults_are_the_configs(name: str, tmp_path: Path) -> None:
    cls = CONFIGS[name]
    assert cls.config_keys() == KEYS[name]
    given = _required(name, tmp_path)
    for cfg in (cls(**given), cls.from_dict(given)):
        data = cfg.to_dict()
        assert list(data) == KEYS[name]
        if name == "ConceptBuildConfig":
            assert data.pop("cache_dir") == str(default_cache_dir())
            assert Path(data.pop("sae")).parts[-2:] == ("minicanvas", "saes")
        assert data == _expected(name, tmp_path)
        # A round trip through JSON keeps every value.
        assert cls.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_flags_and_help_are_the_configs(name: str) -> None:
    actions = [a for a in _parser(CONFIGS[name])._actions if a.dest != "help"]
    assert {a.dest: a.help for a in actions} == HELP[name]
    assert [a.dest for a in actions if a.required] == REQUIRED[name]
    # One flag per key, spelled after it (a concept to build is positional); guidance_half
    # keeps its hidden old name.
    shown = [(a.option_strings or [a.dest])[0] for a in actions if a.help != argparse.SUPPRESS]
    positional = {"concept"} if name == "ConceptBuildConfig" else set()
    assert shown == [k if k in positional else "--" + k.replace("_", "-") for k in KEYS[name]]


@pytest.mark.parametrize(
    ("name", "key"),
    [("EraseConfig", "multiplier"), ("EraseConfig", "guidance_half"),
     ("EraseConfig", "error_term"), ("EraseConfig", "rule"), ("SAeUronConfig", "guidance_half"),
     ("ConceptBuildConfig", "percentile"), ("BlockSweepConfig", "multiplier"),
     ("BlockSweepConfig", "tau"), ("BlockSweepConfig", "out"), ("BlockSweepConfig", "epochs"),
     ("CacheConfig", "activation_site"), ("CacheConfig", "max_shard_mb")],
)  # fmt: skip
def test_a_key_with_a_default_takes_no_null(name: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: must not be null$"):
        CONFIGS[name].from_dict({**_required(name, tmp_path), key: None})


@pytest.mark.parametrize(
    ("name", "data", "error"),
    [("EraseConfig", {"multiplier": 1001}, "multiplier: got 1001.0; must be <= 1000.0"),
     ("SAEmnesiaConfig", {"multiplier": -1001}, "multiplier: got -1001.0; must be >= -1000.0"),
     ("BlockSweepConfig", {"tau": 10_001}, "tau: got 10001; must be <= 10000"),
     ("ConceptBuildConfig", {"tau": 100_001}, "tau: got 100001; must be <= 100000"),
     ("BlockSweepConfig", {"epochs": 1001}, "epochs: got 1001; must be <= 1000"),
     ("BlockSweepConfig", {"epochs": 0}, "epochs: got 0; must be >= 1"),
     ("SAEmnesiaConfig", {"percentile": 100}, "percentile: got 100.0; must be < 100"),
     ("CacheConfig", {"max_shard_mb": 0}, "max_shard_mb: got 0.0; must be > 0"),
     ("EraseConfig", {"window": [0.5, 0.1]},
      "window: got [0.5, 0.1]; need two numbers 0 <= start <= end <= 1"),
     ("SAeUronConfig", {"window": [0.5]},
      "window: got [0.5]; need two numbers 0 <= start <= end <= 1"),
     ("SAeUronConfig", {"rule": "ablate", "error_term": "paper"},
      "error_term: rule 'ablate' needs error_term='exact' (the published error term belongs to "
      "the published rule)"),
     ("CacheConfig", {"activation_site": "inputs"},
      "activation_site: got 'inputs'; allowed: 'output', 'update', 'guidance'"),
     ("EraseConfig", {"guidance_half": "both", "activation_site": "guidance"},
      "guidance_half: activation_site 'guidance' edits the conditional rows; use 'cond'"),
     ("EraseConfig", {"multipler": -2},
      "multipler: unknown key (did you mean 'multiplier'?); allowed: activation_site, "
      "edit_path, error_term, guidance_half, hookpoint, multiplier, multipliers, rule, window")],
)  # fmt: skip
def test_each_config_keeps_its_bounds_and_messages(
    name: str, data: dict[str, Any], error: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        CONFIGS[name].from_dict({**_required(name, tmp_path), **data})
    assert str(caught.value) == error


@pytest.mark.parametrize("name", [n for n in sorted(CONFIGS) if "guidance_half" in KEYS[n]])
def test_the_old_name_of_guidance_half_is_taken(name: str, tmp_path: Path) -> None:
    given = _required(name, tmp_path)
    if "guidance_scale" in KEYS[name]:
        given["guidance_scale"] = 7.5  # edits both halves only under CFG
    cfg = CONFIGS[name].from_dict({**given, "cfg_half": "both"})
    assert cfg.guidance_half == cfg.to_dict()["guidance_half"] == "both"
    with pytest.raises(ConfigError, match="^guidance_half: given twice"):
        CONFIGS[name].from_dict({**given, "cfg_half": "both", "guidance_half": "cond"})


def test_keys_read_and_write_where_they_are_declared() -> None:
    cfg = EraseConfig(rule="ablate", window=[0, 0.5], multiplier=-3)
    assert (cfg.rule, cfg.window, cfg.multiplier) == ("ablate", [0.0, 0.5], -3.0)
    cfg.rule = "project"
    assert cfg.rule == cfg.to_dict()["rule"] == "project" and "rule" not in vars(cfg)
    tech = SAeUronConfig(model="minicanvas", erase_concept="moon")
    copy = tech.replace(erase_concept="star", multiplier=-5.0)
    copy.hookpoint = "unet.up_blocks.2.attentions.2"
    # A copy's parts are its own: the original keeps its values.
    assert (tech.erase_concept, tech.multiplier, tech.hookpoint) == ("moon", None, None)
    assert copy.to_dict()["hookpoint"] == "unet.up_blocks.2.attentions.2"


@pytest.mark.parametrize(
    ("name", "key"),
    [("ConceptBuildConfig", "model"), ("SAEmnesiaConfig", "erase_concept"),
     ("BlockSweepConfig", "model"), ("CacheConfig", "model"), ("CacheConfig", "hookpoint"),
     ("CacheConfig", "out"), ("CacheConfig", "prompts")],
)  # fmt: skip
def test_a_required_key_of_a_part_is_required(name: str, key: str, tmp_path: Path) -> None:
    given = _required(name, tmp_path)
    del given[key]
    with pytest.raises(ConfigError, match=f"^{key}: required$"):
        CONFIGS[name].from_dict(given)
    with pytest.raises(ConfigError, match=f"^{key}: must not be null$"):
        CONFIGS[name].from_dict({**given, key: None})
