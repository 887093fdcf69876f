"""Broken inputs for the fault-injection suite, and how to tell that nothing was written.

:func:`build_fault_files` lays out, once per session, every kind of bad file a user can hand
the commands: truncated, garbage and mismatched SAEs, SAEs of the wrong width, features of
another SAE or hookpoint, text files that are not UTF-8, a model folder whose scheduler has
few training steps (config files only: it must be refused before any weight is wanted).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from saeuron.erasure.features import ConceptFeatures
from saeuron.models.bundles import find_bundle
from saeuron.sae import Sae, SaeConfig

HOOK = "unet.up_blocks.1.attentions.1"
"""MiniCanvas's object block: 96 channels, the bundled SAE reads it."""
OTHER_HOOK = "unet.up_blocks.1.attentions.2"
LATIN1 = "caf\xe9 au lait\n".encode("latin-1")
"""Text that is not UTF-8 (byte 0xe9 alone)."""


def bundle_folder() -> Path:
    bundle = find_bundle("minicanvas")
    assert bundle is not None
    return bundle.folder


def _sae_copy(root: Path, name: str) -> Path:
    folder = root / name / HOOK
    shutil.copytree(bundle_folder() / "saes" / HOOK, folder)
    return folder


def build_fault_files(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    good = _sae_copy(root, "sae")
    weights = (good / "sae.safetensors").read_bytes()

    (_sae_copy(root, "sae_truncated") / "sae.safetensors").write_bytes(weights[: len(weights) // 2])
    (_sae_copy(root, "sae_garbage") / "sae.safetensors").write_bytes(b"not a tensor file " * 64)
    mismatched = _sae_copy(root, "sae_mismatched")
    cfg = json.loads((mismatched / "cfg.json").read_text())
    cfg["num_latents"] = int(cfg.get("num_latents") or 0) * 2 or 4096
    (mismatched / "cfg.json").write_text(json.dumps(cfg))
    (_sae_copy(root, "sae_cfg_garbage") / "cfg.json").write_text("{ this is not json")
    (_sae_copy(root, "sae_cfg_latin1") / "cfg.json").write_bytes(b'{"d_in": 96, "k": 8\xe9}')
    (root / "sae_empty" / HOOK).mkdir(parents=True)
    narrow = Sae(SaeConfig(d_in=32, expansion_factor=2, k=4))
    narrow.save_to_disk(root / "sae_narrow" / HOOK)
    other = Sae(SaeConfig(d_in=96, expansion_factor=16, k=8))  # same shape, other weights
    other.meta["hookpoint"] = HOOK
    other.save_to_disk(root / "sae_other" / HOOK)

    features = bundle_folder() / "features" / HOOK / "moon"
    for name in ("feats", "feats_truncated", "feats_latin1", "feats_no_json"):
        (root / name).mkdir()
        for suffix in (".safetensors", ".json"):
            shutil.copy(features.with_suffix(suffix), root / name / f"moon{suffix}")
    data = (root / "feats_truncated" / "moon.safetensors").read_bytes()
    (root / "feats_truncated" / "moon.safetensors").write_bytes(data[: len(data) // 2])
    (root / "feats_latin1" / "moon.json").write_bytes(b'{"concept": "moon\xe9"}')
    (root / "feats_no_json" / "moon.json").unlink()
    moon = ConceptFeatures.load(features)
    beyond = ConceptFeatures(
        "moon", moon.indices + 100_000, moon.mean, moon.threshold, meta={"hookpoint": HOOK}
    )
    beyond.save(root / "feats_beyond" / "moon")
    elsewhere = ConceptFeatures(
        "moon", moon.indices, moon.mean, moon.threshold, meta={**moon.meta, "hookpoint": OTHER_HOOK}
    )
    elsewhere.save(root / "feats_other_hook" / "moon")
    save_file(
        {"indices": torch.zeros(1, 1, dtype=torch.long), "mean": torch.tensor([[float("nan")]]),
         "threshold": torch.zeros(1, 1)},
        str(root / "feats_nan.safetensors"),
    )  # fmt: skip
    (root / "feats_nan.json").write_text('{"concept": "moon"}')

    (root / "prompts.txt").write_text("a moon\na star\n")
    (root / "prompts_latin1.txt").write_bytes(LATIN1)
    (root / "prompts_empty.txt").write_text("# nothing here\n\n")
    (root / "prompts.md").write_text("a moon\n")
    (root / "prompts_no_column.csv").write_text("text,seed\na moon,1\n")
    (root / "labels_latin1.csv").write_bytes(b"object,style\nmoon,caf\xe9\n")
    (root / "a_file.txt").write_text("not a folder\n")
    (root / "not_a_model").mkdir()

    # A pipeline folder of config files only, with a 100-step training schedule.
    short = root / "short_schedule"
    for part in ("unet", "vae", "scheduler"):
        (short / part).mkdir(parents=True)
    shutil.copy(bundle_folder() / "model_index.json", short)
    shutil.copy(bundle_folder() / "unet" / "config.json", short / "unet")
    shutil.copy(bundle_folder() / "vae" / "config.json", short / "vae")
    scheduler = json.loads((bundle_folder() / "scheduler" / "scheduler_config.json").read_text())
    scheduler["num_train_timesteps"] = 100
    (short / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return root


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and modification time: equal before and after
    a refused command means it wrote, created and removed nothing."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def leftovers(root: Path) -> list[Path]:
    """Temporary files of atomic writes that were not renamed into place."""
    return sorted(root.rglob("*.tmp"))
