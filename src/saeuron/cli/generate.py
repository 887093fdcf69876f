"""``saeuron generate``: sample images with concepts erased."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from saeuron.erasure.technique_config import SAeUronConfig
from saeuron.utils.atomic import atomic_path, check_output_file
from saeuron.utils.config import ConfigError, check_range

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
PATTERN_KEYS = ("index", "prompt", "seed")
"""What a pattern ``--out`` may name: the image's number, its prompt's number, its seed."""


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Sample images of PROMPT with CONCEPT erased (several: --erase "
        "moon,checkered), or with every concept of a recipe (--recipe FILE). The model's own "
        "SAE, hookpoint, steps and guidance are used unless named; a concept without bundled "
        "features has them computed first. One image goes to --out FILE; several (more "
        "prompts, --num-images) go to --out FOLDER (PROMPT-SEED.png) or a pattern such as "
        "'out/{prompt}-{seed}.png' ({index}, {prompt} and {seed} are filled in).",
    )
    parser.add_argument(
        "--erase",
        metavar="CONCEPT",
        help="concept to erase, any phrase; several: comma-separated; with --recipe, some of "
        "its concepts (default: all)",
    )
    parser.add_argument(
        "--prompt", required=True, action="append", help="text prompt; repeat for several"
    )
    parser.add_argument(
        "--num-images", type=int, default=1, help="images per prompt, seeds SEED, SEED+1, ..."
    )
    parser.add_argument(
        "--out", required=True, help="image file (.png, .jpg, .webp), folder, or pattern"
    )
    parser.add_argument(
        "--side-by-side", action="store_true", help="write [original | erased] in one image"
    )
    SAeUronConfig.add_arguments(parser, skip=("erase_concept",))
    parser.set_defaults(handler=run)
    return parser


def output_paths(out: str, prompts: int, per_prompt: int, seed: int) -> list[Path]:
    """Where each image goes: ``out`` itself for one image, else a folder or a pattern."""
    total = prompts * per_prompt
    keys = set(re.findall(r"\{(\w+)\}", out))
    suffix = Path(out).suffix.lower()
    if keys - set(PATTERN_KEYS):
        named = ", ".join("{" + k + "}" for k in PATTERN_KEYS)
        raise ConfigError("out", f"got {out!r}; a pattern may name {named}")
    if keys:
        if suffix not in IMAGE_SUFFIXES:
            raise ConfigError("out", f"got {out!r}; a pattern ends in .png, .jpg or .webp")
        paths = [Path(out.format(index=p * per_prompt + i, prompt=p, seed=seed + i))
                 for p in range(prompts) for i in range(per_prompt)]  # fmt: skip
        if len(set(paths)) != total:
            raise ConfigError(
                "out", f"got {out!r}; {total} images need a pattern that tells them apart "
                "(name {prompt} and {seed})"
            )  # fmt: skip
        return paths
    if suffix in IMAGE_SUFFIXES:
        if total > 1:
            raise ConfigError(
                "out", f"got {out!r} for {total} images; name a folder or a pattern such as "
                "'out/{prompt}-{seed}.png'"
            )  # fmt: skip
        return [Path(out)]
    if suffix:
        raise ConfigError("out", f"got {out!r}; must end in .png, .jpg or .webp, or be a folder")
    folder = Path(out)
    return [folder / f"{p:03d}-{seed + i}.png" for p in range(prompts) for i in range(per_prompt)]


def run(args: argparse.Namespace) -> int:
    # The technique loads torch and a model: imported when the command runs, not for --help.
    from PIL import Image  # noqa: PLC0415

    from saeuron.erasure.technique import SAeUron  # noqa: PLC0415
    from saeuron.models.progress import StepProgress  # noqa: PLC0415

    if args.erase is None and args.recipe is None:
        raise ConfigError("erase", "name the concept to erase (--erase) or a recipe (--recipe)")
    check_range("num_images", args.num_images, ge=1, le=100_000)
    config = SAeUronConfig.from_args(args, erase_concept=args.erase)
    seed = config.sampling.seed
    paths = output_paths(args.out, len(args.prompt), args.num_images, seed)
    for path in paths:
        check_output_file(path, "out")
    given = {k: v for k, v in config.to_dict().items() if v is not None}
    # With a recipe, the sampling it names stands unless given on the command line.
    for key in ("num_inference_steps", "guidance_scale", "model"):
        if getattr(args, key, None) is None:
            given.pop(key, None)
    tech = SAeUron(**given)
    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    seeds = [seed + i for _ in args.prompt for i in range(args.num_images)]
    calls = len(range(0, len(prompts), tech.config.sampling.batch_size))
    with StepProgress(calls * tech.config.sampling.steps * (2 if args.side_by_side else 1),
                      desc="sampling") as bar:  # fmt: skip
        erased = tech.generate(prompts, seeds=seeds, progress=bar)
        if args.side_by_side:
            originals = tech.generate(prompts, seeds=seeds, erase_concept=False, progress=bar)
    for i, (path, image) in enumerate(zip(paths, erased)):
        if args.side_by_side:
            original = originals[i]
            canvas = Image.new("RGB", (original.width * 2, original.height), "white")
            canvas.paste(original, (0, 0))
            canvas.paste(image, (original.width, 0))
            image = canvas
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            image.save(tmp, format=path.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    print(f"wrote {paths[0]}" if len(paths) == 1 else f"wrote {len(paths)} images to "
          f"{paths[0].parent}")  # fmt: skip
    return 0
