"""Tune a recipe on your own model with your own judge (`--judge module:Class`).

    python examples/tune_tiny_sd.py [OUT_FOLDER]

The tiny twin of docs/guides/tune.md: a saved pipeline (tiny-sd), an SAE, the statistics of
every concept of the prompt set (`collect_stats`), a prompt-set file, and a judge class
defined in this file and named on the command line as `tune_tiny_sd:ColourJudge` (this
file's folder is on `sys.path` when it runs). Three trials; run it again with a larger
`--trials` and the study resumes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import saeuron
from saeuron.cli.main import main
from saeuron.erasure.concepts.stats import collect_stats
from saeuron.models.tiny import build_tiny_sd

HOOK = "unet.up_blocks.1.attentions.1"
CONCEPTS = ["cat", "dog", "car"]
STEPS = 2


class ColourJudge:
    """A judge answers classify(images, kind, choices) -> one of choices (or "") per image.

    This one names an image by its mean red level: deterministic, and moved by any edit.
    A real one wraps a classifier, a detector or CLIP."""

    def __init__(self, **_: Any):
        pass

    def classify(self, images: Any, kind: str, choices: Any) -> list[str]:
        reds = [float(np.asarray(im, dtype=np.float32)[..., 0].mean()) for im in images]
        return [choices[int(r * 7) % len(choices)] for r in reds]


def prepare(root: Path) -> dict[str, Path]:
    pipe = build_tiny_sd()
    pipe.save_pretrained(root / "model")
    torch.manual_seed(3)
    sae = saeuron.Sae(saeuron.SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.save_pretrained(root / "saes", HOOK)
    sae = saeuron.Sae.from_pretrained(root / "saes", hookpoint=HOOK)
    for concept in CONCEPTS:  # statistics of every concept: the contrast needs them all
        stats = collect_stats(pipe, sae, [f"a photo of a {concept}", f"a {concept} outside"],
                              concept=concept, hookpoint=HOOK, num_inference_steps=STEPS,
                              progress=False)
        stats.save(root / "stats" / HOOK / concept)
    prompt_set = {
        "name": "tiny",
        "kinds": {"object": CONCEPTS},
        "templates": ["a photo of a {object}"],
        "seeds": [1, 2],
        "retain_seeds": 2,
        "retain_every": 1,
        "heldout_templates": ["a {object} indoors"],
        "forbidden": {"seeds": [99], "templates": ["a test photo of {object}"],
                      "names": ["kitty"]},
    }
    (root / "prompts.json").write_text(json.dumps(prompt_set, indent=2))
    return {"model": root / "model", "saes": root / "saes", "stats": root / "stats",
            "prompt_set": root / "prompts.json"}


def tune(root: Path, trials: int = 3) -> Path:
    world = prepare(root)
    out = root / "cat.json"
    argv = ["tune", "--model", str(world["model"]), "--concept", "cat",
            "--trials", str(trials), "--out", str(out),
            "--prompt-set", str(world["prompt_set"]), "--judge", "tune_tiny_sd:ColourJudge",
            "--saes", str(world["saes"]), "--stats", str(world["stats"]),
            "--num-inference-steps", str(STEPS), "--guidance-scale", "7.5",
            "--batch-size", "8", "--device", "cpu"]
    print("$ saeuron " + " ".join(argv))
    if main(argv) != 0:
        raise SystemExit(1)
    recipe = saeuron.Recipe.load(out)
    edit = recipe.concepts["cat"].edits[0]
    print(f"recipe: {edit.rule} at {edit.hookpoint}, strength {edit.strength:.3g}; "
          f"trials table {out.with_suffix('.trials.csv')}")
    return out


if __name__ == "__main__":
    tune(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tune-tiny-sd"))
