"""A tuning world on the tiny Stable Diffusion pipeline: a saved pipeline, one SAE, the
statistics of three concepts, a prompt set, and a judge given as ``module:Class``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saeuron.erasure.concepts.stats import collect_stats
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
