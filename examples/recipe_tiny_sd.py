"""A recipe by hand, on the tiny test pipeline (random weights, CPU, seconds).

    python examples/recipe_tiny_sd.py [OUT_FOLDER]

Writes an SAE, the features of three concepts and a recipe (cat: ablate; dog: anchor into
cat, else car) to OUT_FOLDER, attaches it, moves a strength, and shows what the loader
refuses: a changed features file and a pipeline the recipe was not made for. `saeuron tune`
writes such recipes for you; this shows what is in one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

import saeuron
from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.recipe import file_sha256
from saeuron.erasure.recipe_erasure import pipeline_fingerprint
from saeuron.models.tiny import build_tiny_sd

HOOK = "unet.up_blocks.1.attentions.1"
CONCEPTS = ["cat", "dog", "car"]


def synthetic_stats(name: str, latents: list[int], width: int) -> ConceptStats:
    """Statistics as `saeuron concept` measures them (here: made up, one step)."""
    mean = torch.zeros(1, width)
    mean[0, latents] = 2.0
    return ConceptStats(concept=name, mean=mean, active_frac=(mean > 0).float() * 0.9,
                        n_prompts=4, timesteps=torch.zeros(1), meta={"hookpoint": HOOK})


def write_recipe(root: Path, pipe) -> Path:
    torch.manual_seed(5)
    sae = saeuron.Sae(saeuron.SaeConfig(d_in=32, expansion_factor=1, k=8))
    sae.save_pretrained(root / "saes", HOOK)
    sae = saeuron.Sae.from_pretrained(root / "saes", hookpoint=HOOK)
    stats = {n: synthetic_stats(n, list(range(8 * i, 8 * i + 8)), 32)
             for i, n in enumerate(CONCEPTS)}
    refs = {}
    for name in CONCEPTS:
        others = [s for other, s in stats.items() if other != name]
        features = select_contrastive(stats[name], others, tau=4)
        features.threshold.fill_(-1e9)  # edit every token (the made-up stats have no scale)
        features.concept = name
        features.meta["sae_fingerprint"] = sae.fingerprint()
        features.save(root / "features" / HOOK / name)
        tensors = root / "features" / HOOK / f"{name}.safetensors"
        refs[name] = {"path": f"features/{HOOK}/{name}", "sha256": file_sha256(tensors)}
    edit = {"hookpoint": HOOK, "sae": {"path": "saes", "fingerprint": sae.fingerprint()}}
    recipe = {
        "format": "saeuron.recipe",
        "format_version": 2,
        "base_model": {"id": "tiny-sd", "fingerprint": pipeline_fingerprint(pipe, [HOOK])},
        "sampling": {"num_inference_steps": 2, "guidance_scale": 7.5},
        "concepts": {
            "cat": {"edits": [{**edit, "features": refs["cat"], "rule": "ablate",
                               "strength": -4.0}]},
            "dog": {"edits": [{**edit, "features": refs["dog"], "rule": "anchor",
                               "strength": 0.0,
                               "anchors": [{"concept": "cat", "features": refs["cat"]},
                                           {"concept": "car", "features": refs["car"]}]}]},
        },
    }
    path = root / "recipe.json"
    path.write_text(json.dumps(recipe, indent=2))
    return path


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_sd()
    path = write_recipe(out, pipe)

    recipe = saeuron.Recipe.load(path)  # validated: unknown keys, versions, values
    prompt, call = "a photo of a dog", {"num_inference_steps": 2, "guidance_scale": 7.5}

    def draw():
        return pipe(prompt, generator=torch.Generator().manual_seed(0), **call).images[0]

    before = draw()
    with saeuron.attach(pipe, recipe, concepts=["dog"]) as erasure:  # dog: anchor into cat
        erased = draw()
        erasure.set_strength("dog", 0.0)  # 0 = off: the pipeline's own image
        off = draw()
    assert np.array_equal(np.asarray(off), np.asarray(before))
    assert not np.array_equal(np.asarray(erased), np.asarray(before))
    print(f"dog erased with {recipe.concepts['dog'].edits[0].rule!r}; strength 0 is a no-op")

    # Erased together with its anchor, dog takes the next candidate (car): resolve_anchors.
    with saeuron.attach(pipe, recipe):
        draw()

    # What the loader refuses, before anything is sampled.
    other = json.loads(path.read_text())
    other["base_model"]["fingerprint"] = "0" * 64  # as if made for another model
    bad = out / "other-model.json"
    bad.write_text(json.dumps(other))
    try:
        saeuron.attach(pipe, bad)
    except saeuron.ConfigError as err:
        print(f"refused: {err}")
    tensors = out / "features" / HOOK / "cat.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1] + b" ")  # the features changed on disk
    try:
        saeuron.attach(pipe, path)
    except FileNotFoundError as err:
        print(f"refused: {err}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("recipe-tiny-sd"))
