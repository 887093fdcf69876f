"""State patch probe on the bundled MiniCanvas model: an upper bound for edits at one block.

For each (object, style) pair with ``(object + style) % 4 == 0`` (25 pairs), the prompt
"A drawing of a {object} in {style} style." is sampled twice at the same seed: once with the
concept swapped for its anchor (the next style, or the next object, same other attribute),
recording the conditional rows of every cross-attention block's output at every step, and
once with the real prompt while chosen blocks' conditional rows are replaced, step by step,
by the anchor run's. If even this perfect copy of another concept's state at a block does
not change the classified concept, no edit at that block alone can erase it without damage.

Printed and written per probed block set: UA (share of images whose swapped attribute is no
longer the true one), cross_kept (share that keep the other attribute) and became_anchor
(share classified as the anchor's concept). "none" is the unpatched run, "anchor" the
anchor prompts' own run.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch
from probe_common import (
    GUIDANCE_SCALE,
    KINDS,
    add_probe_arguments,
    load_minicanvas,
    pick_sets,
    probe_pairs,
    prompts,
    swap_scores,
)

from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import conditional_rows, output_tensor, replace_output
from saeuron.utils.io import atomic_write_json

# Blocks probed alone (the other four attention blocks only as part of the groups below).
SINGLE = (
    "unet.down_blocks.0.attentions.1",
    "unet.down_blocks.1.attentions.1",
    "unet.mid_block.attentions.0",
    "unet.up_blocks.1.attentions.1",
    "unet.up_blocks.1.attentions.2",
    "unet.up_blocks.2.attentions.0",
    "unet.up_blocks.2.attentions.2",
)


def block_sets(blocks: list[str]) -> dict[str, list[str]]:
    """The probed block sets, by name, in the order they are run."""
    sets = {b: [b] for b in blocks if b in SINGLE}
    sets["up_blocks.2.*"] = [b for b in blocks if "up_blocks.2" in b]
    sets["up_blocks.1.*"] = [b for b in blocks if "up_blocks.1" in b]
    sets["down_blocks.*"] = [b for b in blocks if "down_blocks" in b]
    sets["up1.2+up2.*"] = ["unet.up_blocks.1.attentions.2"] + sets["up_blocks.2.*"]
    sets["up1.1+up1.2"] = ["unet.up_blocks.1.attentions.1", "unet.up_blocks.1.attentions.2"]
    sets["all"] = list(blocks)
    return sets


def run(
    pipe: Any,
    clf: MiniCanvasClassifier,
    batch: list[str],
    seed: int,
    steps: int,
    record: dict[str, dict[int, torch.Tensor]] | None = None,
    patch: dict[str, dict[int, torch.Tensor]] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Classified (objects, styles) of one batch; ``record`` collects, ``patch`` replaces the
    conditional rows of each named block's output, keyed by block then pipeline step."""
    blocks = sorted({*(record or {}), *(patch or {})})
    hooks = []
    with track_denoising(pipe) as state:
        for b in blocks:
            module = resolve_module(pipe, b)

            def hook(m: torch.nn.Module, args: Any, out: Any, b: str = b) -> Any:
                x = output_tensor(m, out)
                rows = conditional_rows(x.shape[0], state.guidance, "cond")
                if record is not None and b in record:
                    record[b][state.step] = x[rows].detach().clone()
                if patch is not None and b in patch:
                    new = x.clone()
                    new[rows] = patch[b][state.step]
                    return replace_output(m, out, new)
                return None

            hooks.append(module.register_forward_hook(hook))
        try:
            gens = [torch.Generator().manual_seed(seed) for _ in batch]
            images = pipe(
                batch, num_inference_steps=steps, guidance_scale=GUIDANCE_SCALE,
                generator=gens,
            ).images
        finally:
            for h in hooks:
                h.remove()
    return clf.predict(images)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS),
                        help="concept kinds to swap")  # fmt: skip
    add_probe_arguments(parser, steps=10)
    args = parser.parse_args(argv)
    pipe, clf, blocks = load_minicanvas(parser)
    print(blocks, flush=True)
    sets = pick_sets(parser, block_sets(blocks), args.sets)

    pairs = probe_pairs(args.limit)
    results: dict[str, dict[str, dict[str, float]]] = {}
    t0 = time.time()
    for kind in args.kinds:
        orig, anchor = prompts(pairs, kind)
        needed = sorted({b for bl in sets.values() for b in bl})
        rec: dict[str, dict[int, torch.Tensor]] = {b: {} for b in needed}
        preds = {"anchor": run(pipe, clf, anchor, args.seed, args.steps, record=rec)}
        preds["none"] = run(pipe, clf, orig, args.seed, args.steps)
        print(kind, "none", f"{time.time() - t0:.0f}s", flush=True)
        for name, bl in sets.items():
            preds[name] = run(pipe, clf, orig, args.seed, args.steps,
                              patch={b: rec[b] for b in bl})
            print(kind, name, f"{time.time() - t0:.0f}s", flush=True)
        out = {}
        for name in ["none", *sets, "anchor"]:
            ua, kept, became = swap_scores(kind, pairs, *preds[name])
            out[name] = {"UA": ua, "cross_kept": kept, "became_anchor": became}
            print(kind, name, out[name], f"{time.time() - t0:.0f}s", flush=True)
        results[kind] = out
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
