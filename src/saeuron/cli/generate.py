"""``saeuron generate``: sample images with concepts erased."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from PIL import Image

from saeuron.erasure.technique import SAeUron, SAeUronConfig
from saeuron.models.progress import StepProgress
from saeuron.utils.config import ConfigError
from saeuron.utils.io import atomic_path, check_output_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Sample one image from PROMPT with CONCEPT erased (several: "
        "--erase moon,checkered). The model's own SAE, hookpoint, steps and guidance are used "
        "unless named; a concept without bundled features has them computed first.",
    )
    parser.add_argument(
        "--erase",
        required=True,
        metavar="CONCEPT",
        help="concept to erase, any phrase; several: comma-separated",
    )
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--out", required=True, help="output image file (.png, .jpg, .webp)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="write [original | erased] in one image"
    )
    SAeUronConfig.add_arguments(parser, skip=("erase_concept",))
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    config = SAeUronConfig.from_args(args, erase_concept=args.erase)
    out = Path(args.out)
    if out.suffix.lower() not in IMAGE_SUFFIXES:
        raise ConfigError("out", f"got {str(out)!r}; must end in .png, .jpg or .webp")
    check_output_file(out, "out")
    tech = SAeUron(**config.to_dict())
    seed = config.sampling.seed
    calls = 2 if args.side_by_side else 1
    with StepProgress(calls * config.sampling.steps, desc="sampling") as bar:
        erased = tech.generate([args.prompt], seed=seed, progress=bar)[0]
        if args.side_by_side:
            original = tech.generate([args.prompt], seed=seed, erase_concept=False, progress=bar)[0]
    if args.side_by_side:
        canvas = Image.new("RGB", (original.width * 2, original.height), "white")
        canvas.paste(original, (0, 0))
        canvas.paste(erased, (original.width, 0))
        erased = canvas
    with atomic_path(out) as tmp:
        erased.save(tmp, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    print(f"wrote {out}")
    return 0
