"""Names of every file the project reads or writes, in one place.

A folder layout is a contract between the code that writes it and the code (or the user)
that reads it; keeping the names here means a reader never guesses a writer's spelling.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"
"""Data shipped inside the package (bundled models, prompt sets, the CLIP BPE merges)."""

USER_DIR_ENV = "SAEURON_CACHE"


def user_dir() -> Path:
    """Where saeuron writes for the user: ``$SAEURON_CACHE``, else ``~/.cache/saeuron``.
    Nothing is ever written into the installed package by default."""
    root = os.environ.get(USER_DIR_ENV)
    return Path(root) if root else Path.home() / ".cache" / "saeuron"


def user_bundles() -> Path:
    """Bundles the user built (``saeuron minicanvas train``, ``assets``): found by name."""
    return user_dir() / "bundles"

# -- SAE checkpoints (the EleutherAI sae/sparsify layout of the published SAEs) -------------
SAE_CONFIG = "cfg.json"
SAE_WEIGHTS = "sae.safetensors"
SAE_META = "saeuron.json"
"""Our provenance beside the published layout (hookpoint, model, activation site)."""

# -- concept features and statistics: NAME.safetensors (tensors) + NAME.json (metadata) -----
TENSORS_SUFFIX = ".safetensors"
JSON_SUFFIX = ".json"

# -- activation captures -------------------------------------------------------------------
CAPTURE_PLAN = "plan.json"
CAPTURE_MANIFEST = "manifest.json"
SHARD_PREFIX = "shard_"

# -- SAE training ---------------------------------------------------------------------------
TRAIN_LOG = "train_log.json"
TRAINER_STATE_DIR = "trainer"
TRAINER_STATE = "state.json"
SUPERVISED_FEATURES_DIR = "features"

# -- bundled models -------------------------------------------------------------------------
BUNDLE = "bundle.json"
MODEL_INDEX = "model_index.json"
BUNDLE_SAES_DIR = "saes"
BUNDLE_STATS_DIR = "stats"
BUNDLE_FEATURES_DIR = "features"
BUNDLE_SUPERVISED_DIR = "supervised"
BUNDLE_GUIDED_DIR = "guided"
BUNDLE_CLASSIFIER_DIR = "classifier"
PARAMS = "params.json"
SWEEP = "sweep.json"
ASSETS_SUMMARY = "assets.json"
GUIDED_BUILD = "build.json"

# -- evaluation runs ---------------------------------------------------------------------------
EVAL_RUN = "run.json"
ATTACK_PROMPTS = "attack.json"

# -- shipped prompt sets -----------------------------------------------------------------------
NEUTRAL_PROMPTS = PACKAGE_DATA / "neutral_prompts.txt"
CLIP_BPE = PACKAGE_DATA / "clip" / "bpe_simple_vocab_16e6.txt.gz"
T5_WORDS = PACKAGE_DATA / "t5" / "words.txt"
"""Word list of the tiny offline T5 tokenizer the tiny SD3, FLUX and PixArt pipelines use."""
