"""Erase a concept on a model with no published SAE: capture, train, find, erase.

    python examples/own_model_tiny.py [OUT_FOLDER]

The tiny twin of the commands in docs/guides/own-model.md: the same four `saeuron`
commands, run here on `tiny-sd` (random weights, 32 px, CPU) instead of a real model. On a
real model only --model, --hookpoint and the sizes change (examples/real/*.sh).
"""

from __future__ import annotations

import sys
from pathlib import Path

from saeuron.cli.main import main

HOOK = "unet.up_blocks.1.attentions.1"


def run(*argv: str) -> None:
    print("$ saeuron " + " ".join(argv))
    code = main(list(argv))
    if code != 0:
        raise SystemExit(code)


def chain(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(f"An image of {o} in {s} style."
                                 for o in ("cat", "dog", "tree") for s in ("ink", "oil")))
    others = out / "others.txt"
    others.write_text("a house\na road\na lake\na chair\n")
    model = ["--model", "tiny-sd", "--num-inference-steps", "3"]

    # 1. activations of one block while sampling the prompts
    run("capture", *model, "--hookpoint", HOOK, "--prompts", str(prompts),
        "--out", str(out / "acts"), "--max-shard-mb", "0.05")
    # 2. an SAE on them
    run("train", "--activations", str(out / "acts"), "--out", str(out / "saes"),
        "--k", "4", "--expansion-factor", "4", "--batch-size", "128", "--epochs", "2")
    # 3. the concept's latents (contrasted with other prompts)
    run("concept", "cat", *model, "--sae", str(out / "saes"), "--hookpoint", HOOK,
        "--others", str(others), "--num-prompts", "4", "--tau", "2",
        "--out", str(out / "features" / "cat"), "--cache-dir", str(out / "stats-cache"))
    # 4. sample with it erased, beside the original
    run("generate", "--erase", "cat", "--prompt", "An image of cat in ink style.",
        "--out", str(out / "cat.png"), *model, "--sae", str(out / "saes"),
        "--hookpoint", HOOK, "--features", str(out / "features" / "cat"),
        "--side-by-side", "--device", "cpu")


if __name__ == "__main__":
    chain(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("own-model-tiny"))
