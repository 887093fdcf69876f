"""Text swap probe on the bundled MiniCanvas model: where does a style (object) word act?

For each (object, style) pair with ``(object + style) % 4 == 0`` (25 pairs), the prompt
"A drawing of a {object} in {style} style." is sampled at one seed while the cross-attention
of chosen blocks reads, in its conditional rows, the anchor prompt's text embedding instead
(the next style with the same object, or the next object with the same style); every other
block reads the real prompt.

Printed and written per probed block set: UA (share of images whose swapped attribute is no
longer the true one), kept (share that keep the other attribute) and to_anchor (share
classified as the anchor's concept). "none" swaps nothing.
"""

from __future__ import annotations

import argparse
import itertools
import time
from typing import Any

import numpy as np
import torch

from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.world import ANCHOR_TEMPLATES, OBJECTS, STYLES
from saeuron.models.bundles import find_bundle
from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import list_hookpoints, resolve_module
from saeuron.models.pipelines import load_pipeline
from saeuron.models.tokens import conditional_rows
from saeuron.utils.io import atomic_write_json

TEMPLATE = ANCHOR_TEMPLATES[1]
GUIDANCE_SCALE = 7.5
KINDS = ("style", "object")


def short(block: str) -> str:
    """``unet.up_blocks.2.attentions.0`` -> ``up.2.a0``."""
    return block.replace("unet.", "").replace("attentions.", "a").replace("_blocks", "")


def block_sets(blocks: list[str]) -> dict[str, list[str]]:
    """The probed block sets, by name, in the order they are run."""
    sets = {short(b): [b] for b in blocks}
    sets["down0.*"] = [b for b in blocks if "down_blocks.0" in b]
    sets["down1.*"] = [b for b in blocks if "down_blocks.1" in b]
    sets["up1.*"] = [b for b in blocks if "up_blocks.1" in b]
    sets["up2.*"] = [b for b in blocks if "up_blocks.2" in b]
    sets["down0+up2"] = sets["down0.*"] + sets["up2.*"]
    sets["all"] = list(blocks)
    return sets


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS, help="the concept kind whose word is swapped")
    parser.add_argument("--seed", type=int, default=11, help="sampling seed of every image")
    parser.add_argument("--steps", type=positive, default=20, help="DDIM steps")
    parser.add_argument("--sets", nargs="+", default=None, metavar="NAME",
                        help="probe only these block sets (names as printed; default: all)")
    parser.add_argument("--limit", type=positive, default=None,
                        help="only the first N of the 25 (object, style) pairs (a quick check)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    bundle = find_bundle("minicanvas")
    if bundle is None or bundle.classifier_folder is None:
        parser.error("the bundled minicanvas model (with its classifier) is not installed")
    pipe = load_pipeline("minicanvas", device="cpu", dtype=torch.float32)
    clf = MiniCanvasClassifier.load(bundle.classifier_folder)
    blocks = list_hookpoints(pipe)
    sets = {"none": [], **block_sets(blocks)}
    if args.sets:
        unknown = sorted(set(args.sets) - set(sets))
        if unknown:
            parser.error(f"--sets: unknown {unknown}; choose from {list(sets)}")
        sets = {name: bl for name, bl in sets.items() if name in args.sets}

    pairs = [(o, s) for o, s in itertools.product(range(10), range(10)) if (o + s) % 4 == 0]
    pairs = pairs[: args.limit] if args.limit else pairs
    orig = [TEMPLATE.format(object=OBJECTS[o], style=STYLES[s]) for o, s in pairs]
    if args.kind == "style":
        anchor = [TEMPLATE.format(object=OBJECTS[o], style=STYLES[(s + 1) % 10])
                  for o, s in pairs]
    else:
        anchor = [TEMPLATE.format(object=OBJECTS[(o + 1) % 10], style=STYLES[s])
                  for o, s in pairs]
    true_o = np.array([o for o, _ in pairs])
    true_s = np.array([s for _, s in pairs])
    with torch.no_grad():
        anchor_emb, _ = pipe.encode_prompt(anchor, pipe.device, 1, True, None)

    t0 = time.time()
    results: dict[str, dict[str, float]] = {}
    for name, bl in sets.items():
        hooks = []
        with track_denoising(pipe) as state:

            def swap_text(m: torch.nn.Module, args_: Any, kwargs: dict[str, Any]) -> Any:
                text = kwargs["encoder_hidden_states"].clone()
                text[conditional_rows(text.shape[0], state.cfg, "cond")] = anchor_emb
                kwargs["encoder_hidden_states"] = text
                return args_, kwargs

            for b in bl:
                hooks.append(
                    resolve_module(pipe, b).register_forward_pre_hook(swap_text, with_kwargs=True)
                )
            try:
                gens = [torch.Generator().manual_seed(args.seed) for _ in orig]
                images = pipe(
                    orig, num_inference_steps=args.steps, guidance_scale=GUIDANCE_SCALE,
                    generator=gens,
                ).images
            finally:
                for h in hooks:
                    h.remove()
        o, s = clf.predict(images)
        if args.kind == "style":
            ua, keep, to_anchor = s != true_s, o == true_o, s == (true_s + 1) % 10
        else:
            ua, keep, to_anchor = o != true_o, s == true_s, o == (true_o + 1) % 10
        results[name] = {
            "UA": float(ua.mean()),
            "kept": float(keep.mean()),
            "to_anchor": float(to_anchor.mean()),
        }
        print(args.kind, name, results[name], f"{time.time() - t0:.0f}s", flush=True)
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
