"""A tuning world on the tiny Stable Diffusion pipeline: a saved pipeline, one SAE, the
statistics of three concepts, a prompt set, and a judge given as ``module:Class``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats, collect_stats
from saeuron.erasure.recipe import file_sha256
from saeuron.erasure.recipe_erasure import pipeline_fingerprint
from saeuron.sae import Sae, SaeConfig

HOOK = "unet.up_blocks.1.attentions.1"
CONCEPTS = ["cat", "dog", "car"]
STEPS = 2


class ColourJudge:
    """Names an image by its mean red level: deterministic, and moved by any edit."""

    def __init__(self, **_: Any):
        pass

    def classify(self, images: Any, kind: str, choices: Any) -> list[str]:
        reds = [float(np.asarray(im, dtype=np.float32)[..., 0].mean()) for im in images]
        return [choices[int(r * 7) % len(choices)] for r in reds]


def _stats(name: str, latents: list[int], n: int = 32) -> ConceptStats:
    mean = torch.zeros(1, n)
    mean[0, latents] = 2.0
    active = (mean > 0).float() * 0.9
    return ConceptStats(concept=name, mean=mean, active_frac=active, n_prompts=4,
                        timesteps=torch.zeros(1), meta={"hookpoint": HOOK})  # fmt: skip


def build_recipe_folder(root: Path, tiny_sd: Any) -> Path:
    """A recipe folder: an SAE, features of three concepts, and recipe.json (cat: ablate;
    dog: anchor into cat, then car)."""
    torch.manual_seed(5)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=1, k=8))
    sae.save_pretrained(root / "saes", HOOK)
    sae = Sae.from_pretrained(root / "saes", hookpoint=HOOK)
    stats = {n: _stats(n, list(range(i * 8, i * 8 + 8))) for i, n in enumerate(CONCEPTS)}
    refs = {}
    for name in CONCEPTS:
        features = select_contrastive(stats[name], [s for k, s in stats.items() if k != name],
                                      tau=4)  # fmt: skip
        # The hook edits a latent above its threshold: make every selected one qualify.
        features.threshold.fill_(-1e9)
        features.concept = name
        features.meta["sae_fingerprint"] = sae.fingerprint()
        features.save(root / "features" / HOOK / name)
        refs[name] = {"path": f"features/{HOOK}/{name}",
                      "sha256": file_sha256(root / "features" / HOOK / f"{name}.safetensors")}
    edit = {"hookpoint": HOOK, "sae": {"path": "saes", "fingerprint": sae.fingerprint()}}
    data = {
        "base_model": {"id": "tiny-sd", "fingerprint": pipeline_fingerprint(tiny_sd, [HOOK])},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 7.5},
        "concepts": {
            "cat": {"edits": [{**edit, "features": refs["cat"], "rule": "ablate",
                               "strength": -4.0}]},
            "dog": {"edits": [{**edit, "features": refs["dog"], "rule": "anchor", "strength": 0,
                               "anchors": [{"concept": "cat", "features": refs["cat"]},
                                           {"concept": "car", "features": refs["car"]}]}]},
        },
    }  # fmt: skip
    (root / "recipe.json").write_text(json.dumps(data))
    return root



def build_world(root: Path, pipe: Any) -> dict[str, Path]:
    model = root / "model"
    pipe.save_pretrained(model)
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta.update(hookpoint=HOOK)
    saes = root / "saes"
    sae.save_pretrained(saes, HOOK)
    loaded = Sae.from_pretrained(saes, hookpoint=HOOK)
    stats = root / "stats"
    for concept in CONCEPTS:
        collected = collect_stats(
            pipe, loaded, [f"a photo of a {concept}", f"a {concept} outside"], concept=concept,
            hookpoint=HOOK, num_inference_steps=STEPS, seed=0, progress=False,
        )  # fmt: skip
        collected.save(stats / HOOK / concept)
    prompt_set = root / "prompts.json"
    prompt_set.write_text(json.dumps({
        "name": "tiny", "kinds": {"object": CONCEPTS}, "templates": ["a photo of a {object}"],
        "seeds": [1, 2], "retain_seeds": 2, "retain_every": 1,
        "heldout_templates": ["a {object} indoors"],
        "forbidden": {"seeds": [99], "templates": ["a test photo of {object}"],
                      "names": ["kitty"]},
    }))  # fmt: skip
    return {"model": model, "saes": saes, "stats": stats, "prompt_set": prompt_set}


def tune_args(world: dict[str, Path], out: Path, trials: int = 2, *extra: str) -> list[str]:
    return [
        "tune", "--model", str(world["model"]), "--concept", "cat", "--trials", str(trials),
        "--out", str(out), "--prompt-set", str(world["prompt_set"]),
        "--judge", "helpers.recipes:ColourJudge", "--saes", str(world["saes"]),
        "--stats", str(world["stats"]), "--num-inference-steps", str(STEPS),
        "--guidance-scale", "7.5", "--batch-size", "8", "--device", "cpu",
        "--rules", "ablate,anchor", *extra,
    ]  # fmt: skip
