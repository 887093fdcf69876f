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
import time
from typing import Any

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

from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import conditional_rows
from saeuron.utils.io import atomic_write_json


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=KINDS, help="the concept kind whose word is swapped")
    add_probe_arguments(parser, steps=20)
    args = parser.parse_args(argv)
    pipe, clf, blocks = load_minicanvas(parser)
    sets = pick_sets(parser, {"none": [], **block_sets(blocks)}, args.sets)
    pairs = probe_pairs(args.limit)
    orig, anchor = prompts(pairs, args.kind)
    with torch.no_grad():
        anchor_emb, _ = pipe.encode_prompt(anchor, pipe.device, 1, True, None)

    t0 = time.time()
    results: dict[str, dict[str, float]] = {}
    for name, bl in sets.items():
        hooks = []
        with track_denoising(pipe) as state:

            def swap_text(m: torch.nn.Module, args_: Any, kwargs: dict[str, Any]) -> Any:
                text = kwargs["encoder_hidden_states"].clone()
                text[conditional_rows(text.shape[0], state.guidance, "cond")] = anchor_emb
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
        ua, kept, to_anchor = swap_scores(args.kind, pairs, *clf.predict(images))
        results[name] = {"UA": ua, "kept": kept, "to_anchor": to_anchor}
        print(args.kind, name, results[name], f"{time.time() - t0:.0f}s", flush=True)
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
