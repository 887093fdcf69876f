"""How well the guided SAE inside MiniCanvas' text encoder reconstructs phrasings it never saw.

Encodes every (object, style) pair in each phrasing (the test one, the benchmark's held-out
one, and the held-out one behind five random vocabulary words), runs the SAE on the 77
token embeddings of each prompt, and prints the FVU (the squared error over the variance of
the tokens) and how many latents never fire. A build's own held-out FVU is measured on
held-out anchor prompts; this one is measured on phrasings outside the anchors.

    python benchmarks/minicanvas/text_sae_fvu.py [--bundle FOLDER]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from saeuron.minicanvas.guided import guided_folder, prefix_vocabulary
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_TEMPLATES
from saeuron.models.bundles import find_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import encode_prompts
from saeuron.perf.training import heldout_fvu
from saeuron.sae import Sae

HOOKPOINT = "text_encoder.final_layer_norm"
HELD_OUT = "A {object} drawn in the {style} style."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundle", type=Path, default=None,
        help="MiniCanvas bundle folder (default: the one the CLI uses)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=188, help="seed of the random prefixes")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    folder = args.bundle or find_bundle("minicanvas").folder
    pipe = load_pipeline(str(folder), device="cpu", dtype=torch.float32)
    sae = Sae.from_pretrained(guided_folder(folder) / "saes", hookpoint=HOOKPOINT)
    rng = np.random.default_rng(args.seed)
    words = prefix_vocabulary(pipe.tokenizer)
    held_out = [HELD_OUT.format(object=o, style=s) for o in OBJECTS for s in STYLES]
    sets = {
        "test phrasing": [TEST_TEMPLATES[0].format(object=o, style=s)
                          for o in OBJECTS for s in STYLES],  # fmt: skip
        "held-out phrasing": held_out,
        "held-out phrasing, 5 random words in front": [
            " ".join([*rng.choice(words, 5), p]) for p in held_out
        ],
    }
    for name, prompts in sets.items():
        x = encode_prompts(pipe, "text_encoder", prompts)
        x = x.reshape(-1, x.shape[-1])
        fvu = heldout_fvu(lambda xb: sae(xb).sae_out, x, 4096, torch.device("cpu"))
        with torch.no_grad():
            fires = sae.encode_dense(x).amax(0) > 0
        print(f"{name}: {len(x)} tokens, FVU {fvu:.4f}, "
              f"{int((~fires).sum())} of {fires.numel()} latents never fire")  # fmt: skip


if __name__ == "__main__":
    main()
