"""How a guided erasure changes one concept's images as gamma grows: one row of images per
setting, each classified by the bundled MiniCanvas classifier.

    python benchmarks/minicanvas/edit_strength.py pastel --gammas 0 -2 -3.5 -5 \
        --out docs/style-edit-strength.png

Every row uses the concept's shipped guided params (blocks, rule, tau, specificity filter)
with gamma replaced, and any of blocks, rule, anchor, tau and filter replaced when given;
the first row is the model without erasure. The prompts are the
concept with eight partners of the other kind, one seed each (100, 101, ...). Prints one
JSON line per row: gamma, the classified objects and styles, and how many images still show
the erased concept (``kept``) and the partner (``partner_kept``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

import torch

from saeuron.minicanvas.assets import concept_kind
from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.guided import GuidedAssets, load_guided_params
from saeuron.minicanvas.world import OBJECTS, STYLES
from saeuron.models.bundles import find_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.utils.images import save_grid

PARTNER_OBJECTS = ("circle", "star", "house", "moon", "arrow", "ring", "heart", "cross")
PARTNER_STYLES = ("striped", "dotted", "checkered", "outlined", "gradient", "neon", "pastel",
                  "grainy")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("concept", help="a MiniCanvas style or object")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.0, -2.0, -5.0])
    parser.add_argument("--blocks", nargs="+", default=None, help="blocks to erase at")
    parser.add_argument("--rule", default=None, help="edit rule (ablate, anchor, project, scale)")
    parser.add_argument("--anchor", default=None, help="the anchor concept of rule 'anchor'")
    parser.add_argument("--tau", type=int, default=None, help="latents per step")
    parser.add_argument("--max-other-ratio", default=None,
                        help="specificity filter, or 'none' for no filter")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--out", default="edit_strength.png", help="the picture (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    folder = find_bundle("minicanvas").folder
    pipe = load_pipeline("minicanvas")
    assets = GuidedAssets(folder)
    shipped = dict(load_guided_params(folder)[args.concept])
    if args.blocks:
        shipped["hookpoint"] = args.blocks
    for key, value in (("rule", args.rule), ("anchor", args.anchor), ("tau", args.tau)):
        if value is not None:
            shipped[key] = value
    if args.max_other_ratio is not None:
        ratio = args.max_other_ratio.lower()
        shipped["max_other_ratio"] = None if ratio == "none" else float(ratio)
    classifier = MiniCanvasClassifier.load(folder / "classifier")
    style = concept_kind(args.concept) == "style"
    partners = [p for p in (PARTNER_OBJECTS if style else PARTNER_STYLES) if p != args.concept]
    prompts = [
        f"An image of {p} in {args.concept} style." if style
        else f"An image of {args.concept} in {p} style."
        for p in partners
    ]  # fmt: skip

    def sample(params: dict[str, Any] | None) -> list[Any]:
        erasing = (
            assets.erasing(pipe, [args.concept], {args.concept: params})
            if params else contextlib.nullcontext()
        )  # fmt: skip
        with erasing:
            return pipe(
                prompts, num_inference_steps=args.steps, guidance_scale=7.5,
                generator=[torch.Generator().manual_seed(100 + i) for i in range(len(prompts))],
            ).images  # fmt: skip

    rows = []
    for gamma in [None, *args.gammas]:
        params = None if gamma is None else {**shipped, "multiplier": gamma}
        images = sample(params)
        objects, styles = classifier.predict(images)
        objects = [OBJECTS[i] for i in objects]
        styles = [STYLES[i] for i in styles]
        own, other = (styles, objects) if style else (objects, styles)
        print(json.dumps({
            "gamma": gamma, "objects": objects, "styles": styles,
            "kept": sum(c == args.concept for c in own),
            "partner_kept": sum(c == p for c, p in zip(other, partners)),
        }))  # fmt: skip
        rows.append(("no erasure" if gamma is None else f"gamma {gamma:g}", images))
    save_grid(rows, args.out, label_width=90)


if __name__ == "__main__":
    main()
