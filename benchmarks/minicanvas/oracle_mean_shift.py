"""Mean-shift probe: can any per-step linear edit of one block's guidance site erase a style?

The guidance site is what the prompt adds at a block: the conditional minus the
unconditional output. From a capture of it (``saeuron minicanvas guided build --workdir W``
keeps one per block, ``W/guidance-<block>``, with ``W/labels.csv``), this probe takes, per
style and step, the mean of that difference over the style's anchor prompts, and while
sampling a style's validation prompts adds ``gamma x (mean of the other styles - mean of the
style)`` to the block's conditional rows. Gamma 1 moves the style's average guidance onto
the other styles' average, with the SAE's reconstruction error and every latent included:
an upper bound for edits that remove a fixed direction per step at that block (the SAE
rules ``ablate`` and ``project`` at gamma 0 are of that kind).

``--per-position`` keeps one mean per token position (for textures fixed to the grid).

Printed per style and gamma: UA (share of images no longer classified as the style),
object accuracy (share that keep their object) and what the images are read as.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
from probe_common import GUIDANCE_SCALE, load_minicanvas
from safetensors.torch import load_file

from saeuron.minicanvas.world import ANCHOR_TEMPLATES, OBJECTS, STYLES
from saeuron.models.denoising import track_denoising
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import conditional_rows, output_tensor, replace_output
from saeuron.utils.io import atomic_write_json


def style_means(capture: Path, manifest: dict[str, Any], labels: Path) -> torch.Tensor:
    """``[style, step, position, channel]`` means of the captured guidance site."""
    per_step = int(manifest["tokens_per_step"])
    steps = list(manifest["steps"])
    with labels.open(encoding="utf-8", newline="") as fh:
        style_of = torch.tensor(
            [STYLES.index(r["style"]) if r["style"] else -1 for r in csv.DictReader(fh)]
        )
    d_in = int(manifest["d_in"])
    sums = torch.zeros(len(STYLES), len(steps), per_step, d_in, dtype=torch.float64)
    counts = torch.zeros(len(STYLES), len(steps))
    row_of = {s: i for i, s in enumerate(steps)}
    for shard in sorted(capture.glob("shard_*.safetensors")):
        data = load_file(shard)
        n = len(data["activations"]) // per_step
        acts = data["activations"].reshape(n, per_step, -1).double()
        prompt = data["prompt"].reshape(n, per_step)[:, 0].long()
        step = torch.tensor([row_of[int(s)] for s in data["step"].reshape(n, per_step)[:, 0]])
        styles = style_of[prompt]
        keep = styles >= 0
        sums.index_put_((styles[keep], step[keep]), acts[keep], accumulate=True)
        counts.index_put_((styles[keep], step[keep]), torch.ones(int(keep.sum())), accumulate=True)
    return (sums / counts[..., None, None]).float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("capture", type=Path, help="guidance-site capture folder of the block")
    parser.add_argument("--labels", type=Path, default=None,
                        help="labels CSV of the captured prompts (default: beside the capture)")
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=STYLES)
    parser.add_argument("--gammas", nargs="+", type=float, default=[1.0, 3.0, 6.0])
    parser.add_argument("--per-position", action="store_true",
                        help="one mean per token position instead of one per step")
    parser.add_argument("--seeds", nargs="+", type=int, default=[11, 22, 33, 44],
                        help="validation seeds (every object once per seed)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    for gamma in args.gammas:
        if not np.isfinite(gamma):
            parser.error(f"--gammas: got {gamma}; must be finite")
    manifest = json.loads((args.capture / "manifest.json").read_text(encoding="utf-8"))
    if manifest.get("activation_site") != "guidance":
        parser.error(f"{args.capture}: not a guidance-site capture")
    labels = args.labels or args.capture.parent / "labels.csv"
    means = style_means(args.capture, manifest, labels)
    per_step = int(manifest["tokens_per_step"])
    if not args.per_position:
        means = means.mean(2, keepdim=True).expand(-1, -1, per_step, -1)
    pipe, clf, _ = load_minicanvas(parser)
    module = resolve_module(pipe, manifest["hookpoint"])
    results: dict[str, dict[str, dict[str, object]]] = {}
    start = time.time()
    for style in args.styles:
        s = STYLES.index(style)
        shift = means[[i for i in range(len(STYLES)) if i != s]].mean(0) - means[s]
        prompts = [ANCHOR_TEMPLATES[1].format(object=o, style=style) for o in OBJECTS]
        results[style] = {}
        for gamma in args.gammas:
            with track_denoising(pipe) as state:

                def hook(
                    m: torch.nn.Module, inputs: object, out: object,
                    shift: torch.Tensor = shift, gamma: float = gamma, state: Any = state,
                ) -> object:  # fmt: skip
                    x = output_tensor(m, out)
                    rows = conditional_rows(x.shape[0], state.guidance, "cond")
                    # [position, channel] -> the block's [channel, H, W] layout.
                    add = shift[state.step].T.reshape(x.shape[1:])
                    new = x.clone()
                    new[rows] += gamma * add
                    return replace_output(m, out, new)

                handle = module.register_forward_hook(hook)
                try:
                    batch = prompts * len(args.seeds)
                    gens = [torch.Generator().manual_seed(seed)
                            for seed in args.seeds for _ in prompts]  # fmt: skip
                    # The capture's schedule: the means are indexed by its steps.
                    images = pipe(batch, num_inference_steps=int(manifest["num_inference_steps"]),
                                  guidance_scale=GUIDANCE_SCALE, generator=gens).images  # fmt: skip
                finally:
                    handle.remove()
            objects, styles = clf.predict(images)
            true_objects = np.tile(np.arange(len(OBJECTS)), len(args.seeds))
            row = {
                "UA": float((styles != s).mean()),
                "object_accuracy": float((objects == true_objects).mean()),
                "read_as": {STYLES[i]: c for i, c in Counter(styles.tolist()).most_common()},
            }
            results[style][str(gamma)] = row
            print(style, gamma, row, f"{time.time() - start:.0f}s", flush=True)
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
