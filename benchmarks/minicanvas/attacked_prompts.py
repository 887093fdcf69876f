"""How an attack undoes a guided erasure: tokens edited on plain and attacked prompts.

Reads the images table of a ``saeuron eval`` run with the ``unlearndiffatk`` metric against
the ``guided`` technique (``OUTPUT_DIR/unlearndiffatk/images.csv``), and for each plain
prompt and its attacked version counts the tokens the concept's edit changes at the first of
its params' hookpoints (the text encoder's output, or a denoiser block over a whole
sampling run). Fewer edited tokens on the attacked prompts: the prefix steers the prompt
away from the concept's latents. As many: the edit still fires and the prefix writes the
concept back in through what the edit leaves alone.

``--random-prefixes`` also samples the plain prompts with five random vocabulary words in
front, erased, and reports the share still erased (UA): whether any prefix undoes the
erasure, or only an optimised one.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch

from saeuron.erasure.erase import erase
from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.guided import (
    GuidedAssets,
    blocks_of,
    load_guided_params,
    multipliers_of,
    prefix_vocabulary,
)
from saeuron.minicanvas.world import STYLES
from saeuron.models.bundles import find_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import encode_prompts, prompt_encoder_of


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="output_dir of the attack's `saeuron eval` run")
    parser.add_argument("concept", help="the erased concept (the run's erase_concept)")
    parser.add_argument("--random-prefixes", action="store_true")
    parser.add_argument("--seed", type=int, default=188, help="the run's seed")
    args = parser.parse_args(argv)
    table = args.run / "unlearndiffatk" / "images.csv"
    if not table.is_file():
        parser.error(f"{table} not found: not an unlearndiffatk run")
    with table.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    plain = [r["prompt"] for r in rows if r["group"] == "before"]
    attacked = [r["prompt"] for r in rows if r["group"] == "after"]
    bundle = find_bundle("minicanvas")
    if bundle is None or bundle.classifier_folder is None:
        parser.error("the bundled minicanvas model (with its classifier) is not installed")
    torch.set_num_threads(2)
    pipe = load_pipeline("minicanvas", device="cpu", dtype=torch.float32)
    assets = GuidedAssets(bundle.folder)
    params = load_guided_params(bundle.folder)
    if args.concept not in params:
        parser.error(f"no guided params for {args.concept!r}")
    p = params[args.concept]
    hookpoint = blocks_of(p)[0]
    features = assets.features(args.concept, p, hookpoint)
    gamma = multipliers_of(p)[0]

    def edited(prompt: str) -> int:
        with erase(pipe, assets.sae(hookpoint), [features], multiplier=gamma,
                   hookpoint=hookpoint, rule=p["rule"], warn_unedited=False) as eraser:  # fmt: skip
            if prompt_encoder_of(hookpoint):
                encode_prompts(pipe, "text_encoder", [prompt])
            else:
                pipe([prompt], num_inference_steps=20, guidance_scale=7.5, output_type="latent",
                     generator=torch.Generator().manual_seed(args.seed))  # fmt: skip
        return eraser.edited_tokens

    for name, prompts in (("plain", plain), ("attacked", attacked)):
        print(f"{args.concept} {name}: edited tokens per prompt {[edited(q) for q in prompts]}")
    if args.random_prefixes and args.concept in STYLES:
        # The builder's vocabulary: no concept name, so no prefix names the erased style.
        words = prefix_vocabulary(pipe.tokenizer)
        rng = np.random.default_rng(args.seed)
        prefixed = [" ".join(rng.choice(words, 5)) + " " + q for q in plain]
        clf = MiniCanvasClassifier.load(bundle.classifier_folder)
        with assets.erasing(pipe, [args.concept], params):
            images = pipe(prefixed, num_inference_steps=20, guidance_scale=7.5,
                          generator=[torch.Generator().manual_seed(args.seed + i)
                                     for i in range(len(prefixed))]).images  # fmt: skip
        _, styles = clf.predict(images)
        ua = float((styles != STYLES.index(args.concept)).mean())
        print(f"{args.concept} random 5-word prefixes, erased: UA {ua:.2f}")


if __name__ == "__main__":
    main()
