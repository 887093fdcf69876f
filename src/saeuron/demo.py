"""``saeuron demo``: the whole method end to end on a small model, with a before/after grid.

capture activations -> train an SAE -> find a concept's features -> erase while sampling.
Until the bundled MiniCanvas model ships, the default model is ``tiny-sd`` (random weights):
the pictures are noise, but every stage runs for real and the numbers printed are measured.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, check_range, field
from .io import atomic_path

logger = logging.getLogger(__name__)

OBJECTS = ("cat", "dog", "tower", "tree", "car", "flower")
STYLES = ("watercolor", "pixel art", "sketch", "oil painting")


@dataclass
class DemoConfig(Config):
    out: str = field("demo.png", help="before/after grid image")
    model: str = field("tiny-sd", help="model to run the demo on")
    hookpoint: str = field("unet.up_blocks.1.attentions.1", help="module the SAE reads")
    concept: str = field("cat", help="concept to erase")
    multiplier: float = field(-20.0, help="gamma of the erasure")
    steps: int = field(4, help="denoising steps")
    workdir: str | None = field(None, help="where activations and the SAE go; default: a temp dir")
    seed: int = field(0, help="random seed")

    def __post_init__(self) -> None:
        check_range("steps", self.steps, ge=2)
        if not self.out.lower().endswith(".png"):
            from .config import ConfigError

            raise ConfigError("out", f"got {self.out!r}; must end in .png")


@dataclass
class DemoResult:
    out: Path
    heldout_fvu: float | None
    latents: list[int]
    change_on_concept: float
    change_elsewhere: float
    seconds: float


def _grid(rows: list[tuple[str, Any, Any]], scale: int = 4):
    from PIL import Image, ImageDraw

    cell = rows[0][1].width * scale
    label_w = 220
    header = 24
    grid = Image.new("RGB", (label_w + 2 * cell + 30, header + len(rows) * (cell + 10)), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((label_w, 4), "original", fill="black")
    draw.text((label_w + cell + 20, 4), "erased", fill="black")
    for i, (label, before, after) in enumerate(rows):
        y = header + i * (cell + 10)
        draw.text((6, y + cell // 2 - 6), label, fill="black")
        grid.paste(before.resize((cell, cell), Image.NEAREST), (label_w, y))
        grid.paste(after.resize((cell, cell), Image.NEAREST), (label_w + cell + 20, y))
    return grid


def run_demo(cfg: DemoConfig) -> DemoResult:
    from .capture import CacheConfig, run_cache
    from .concepts import ConceptBuildConfig, build_concept
    from .erase import erase
    from .pipelines import load_pipeline
    from .sae import Sae
    from .train import TrainConfig, train_sae

    start = time.perf_counter()
    workdir = Path(cfg.workdir or tempfile.mkdtemp(prefix="saeuron-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    prompts = [f"An image of {o} in {s} style." for o in OBJECTS for s in STYLES]
    prompt_file = workdir / "prompts.txt"
    prompt_file.write_text("\n".join(prompts) + "\n", encoding="utf-8")

    logger.info("1/4 capturing activations at %s", cfg.hookpoint)
    run_cache(
        CacheConfig(
            model=cfg.model,
            hookpoint=cfg.hookpoint,
            prompts=str(prompt_file),
            out=str(workdir / "activations"),
            num_inference_steps=cfg.steps,
            guidance_scale=7.5,
            max_shard_mb=0.1,
            seed=cfg.seed,
        )
    )
    logger.info("2/4 training the SAE")
    sae = train_sae(
        TrainConfig(
            activations=str(workdir / "activations"),
            out=str(workdir / "sae"),
            k=4,
            expansion_factor=4,
            batch_size=256,
            epochs=3,
            lr=1e-3,
            heldout_fraction=0.2,
            seed=cfg.seed,
        )
    )
    sae = Sae.from_pretrained(workdir / "sae", hookpoint=cfg.hookpoint)
    log_path = workdir / "sae" / cfg.hookpoint / "train_log.json"
    heldout = None
    if log_path.is_file():
        import json

        epochs = json.loads(log_path.read_text(encoding="utf-8")).get("epochs", [])
        heldout = epochs[-1].get("heldout_fvu") if epochs else None

    logger.info("3/4 finding the features of %r", cfg.concept)
    pipe = load_pipeline(cfg.model)
    features = build_concept(
        ConceptBuildConfig(
            concept=cfg.concept,
            model=cfg.model,
            sae=str(workdir / "sae"),
            hookpoint=cfg.hookpoint,
            num_inference_steps=cfg.steps,
            num_prompts=8,
            tau=2,
            cache_dir=str(workdir / "concept_cache"),
            seed=cfg.seed,
        ),
        pipe=pipe,
        sae=sae,
    )

    logger.info("4/4 sampling with and without the erasure")
    shown = [f"An image of {cfg.concept}.", f"An image of {cfg.concept} in sketch style."]
    shown += ["An image of tower.", "An image of tree in watercolor style."]

    def sample() -> list[Any]:
        generators = [torch.Generator().manual_seed(cfg.seed + i) for i in range(len(shown))]
        return pipe(shown, num_inference_steps=cfg.steps, generator=generators).images

    before = sample()
    with erase(pipe, sae, features, multiplier=cfg.multiplier):
        after = sample()
    change = [
        float(np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b, dtype=np.float32)).mean())
        for a, b in zip(before, after)
    ]
    out = Path(cfg.out)
    with atomic_path(out) as tmp:
        _grid(list(zip(shown, before, after))).save(tmp, format="PNG")
    return DemoResult(
        out=out,
        heldout_fvu=heldout,
        latents=sorted(features.latents()),
        change_on_concept=float(np.mean(change[:2])),
        change_elsewhere=float(np.mean(change[2:])),
        seconds=time.perf_counter() - start,
    )


def _handle(args: argparse.Namespace) -> int:
    result = run_demo(DemoConfig.from_args(args))
    fvu = "n/a" if result.heldout_fvu is None else f"{result.heldout_fvu:.3f}"
    print(f"SAE held-out FVU: {fvu}")
    print(f"latents edited for the concept: {result.latents}")
    print(
        "mean pixel change (0-255): "
        f"concept prompts {result.change_on_concept:.2f}, "
        f"other prompts {result.change_elsewhere:.2f}"
    )
    print(f"wrote {result.out} in {result.seconds:.1f} s")
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="run the method end to end and write a before/after grid"
    )
    DemoConfig.add_arguments(parser)
    parser.set_defaults(handler=_handle)
