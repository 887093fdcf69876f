"""The MiniCanvas benchmark: every concept erased in turn, every variant side by side.

Variants compared in the same run: no erasure, the concept as negative prompt, SAeUron with
the library defaults, SAeUron editing both CFG halves, SAeUron with the published error
term, and SAEmnesia. Scores are those of :mod:`saeuron.minicanvas.judge`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saeuron.minicanvas.assets import concept_kind, load_params, load_supervised_params
from saeuron.minicanvas.judge import (
    VARIANT_LABELS,
    VARIANTS,
    Judged,
    MiniCanvasJudge,
    evaluate,
    prompt_following,
    prompt_rows,
    scores,
    split_baseline,
)
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_SEEDS, TEST_TEMPLATES
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.images import before_after_rows, save_grid
from saeuron.utils.io import atomic_path, atomic_write_json, check_output_folder

logger = logging.getLogger(__name__)

# A regression guard for CI: concepts whose erasure met the quick test's bounds (UA up by at
# least 0.5, IRA and CRA at least 0.8) at its 10 steps and 2 seeds; the full benchmark in the
# README reports every concept, those the method does not yet erase well included.
QUICK_CONCEPTS = ("moon", "triangle", "checkered")


@dataclass
class BenchConfig(Config):
    out: str = field("minicanvas-bench", help="folder for results.json, results.md, grid.png")
    quick: bool = field(False, help="a CI-sized subset: 3 concepts, 2 variants, 2 seeds, 10 steps")
    concepts: list[str] | None = field(None, help="concepts to erase; default: all 20")
    variants: list[str] | None = field(None, help="rows of the table; default: all")
    seeds: list[int] | None = field(
        None, ge=0, le=2**63 - 1, help="seeds of the target prompts; default: test seeds"
    )
    retain_seeds: int = field(1, ge=1, le=100, help="seeds per retained (non-target) prompt")
    num_inference_steps: int = field(20, ge=1, le=1000, help="DDIM steps (quick: at most 10)")
    guidance_scale: float = field(7.5, ge=0, le=100, help="CFG scale")
    batch_size: int = field(50, ge=1, le=4096, help="images per pipeline call")
    model: str = field("minicanvas", help="the MiniCanvas pipeline")
    retain_every: int = field(
        1, ge=1, help="judge retention on every N-th retained prompt (1: all 90; for quick checks)"
    )
    grid_variant: str = field(
        "saeuron", choices=VARIANTS, help="the variant whose erased images grid.png shows"
    )
    template: str = field(
        TEST_TEMPLATES[0], help="prompt template with {object} and {style} (held-out phrasings)"
    )

    def __post_init__(self) -> None:
        if "{object}" not in self.template or "{style}" not in self.template:
            raise ConfigError(
                "template", f"got {self.template!r}; it needs {{object}} and {{style}}"
            )
        if self.quick:
            self.concepts = self.concepts or list(QUICK_CONCEPTS)
            self.variants = self.variants or ["none", "saeuron"]
            self.num_inference_steps = min(self.num_inference_steps, 10)
            self.seeds = self.seeds or list(TEST_SEEDS[:2])
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        self.variants = self.variants or list(VARIANTS)
        if "none" not in self.variants:
            self.variants.insert(0, "none")
        self.seeds = self.seeds or list(TEST_SEEDS)
        for concept in self.concepts:
            concept_kind(concept)
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError("variants", f"got {variant!r}; allowed: {', '.join(VARIANTS)}")
        check_range("retain_seeds", self.retain_seeds, ge=1, le=len(self.seeds))
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("batch_size", self.batch_size, ge=1)
        check_output_folder(self.out, "out")


def _table(results: dict[str, dict[str, dict[str, float]]], variants: Sequence[str]) -> str:
    lines = [
        "| variant | style UA | style IRA | style CRA | object UA | object IRA | object CRA |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        cells = []
        for kind in ("style", "object"):
            rows = [
                r[variant] for c, r in results.items() if concept_kind(c) == kind and variant in r
            ]
            for metric in ("UA", "IRA", "CRA"):
                cells.append(f"{np.mean([r[metric] for r in rows]):.3f}" if rows else "-")
        lines.append(f"| {VARIANT_LABELS[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    start = time.perf_counter()
    judge = MiniCanvasJudge(cfg.model, cfg.num_inference_steps, cfg.guidance_scale)
    params = load_params(judge.folder)
    supervised = {}
    if "saemnesia" in cfg.variants:
        supervised = load_supervised_params(judge.folder)
    results: dict[str, dict[str, dict[str, float]]] = {}
    examples = []
    # Unerased images do not depend on the concept: sample every pair once and share them.
    all_rows = prompt_rows(cfg.template, cfg.seeds)
    baseline = judge.run(all_rows, batch_size=cfg.batch_size, desc="no erasure")
    baseline_seeds = np.array([row[3] for row in all_rows])
    following = prompt_following(baseline)
    logger.info("prompt following: %s", following)
    for concept in tqdm(cfg.concepts, desc="concepts", unit="concept"):
        results[concept] = {}
        before: Judged | None = None
        after: Judged | None = None
        for variant in cfg.variants:
            if variant == "none":
                target, retain = split_baseline(
                    baseline, baseline_seeds, concept, cfg.seeds, cfg.retain_seeds,
                    cfg.retain_every,
                )  # fmt: skip
                score = scores(concept, target, retain)
            else:
                chosen = {"saemnesia": supervised}.get(variant, params).get(concept, {})
                score, target = evaluate(
                    judge, concept, variant, chosen, cfg.seeds, cfg.retain_seeds,
                    template=cfg.template, batch_size=cfg.batch_size,
                    retain_every=cfg.retain_every,
                )  # fmt: skip
            results[concept][variant] = score
            logger.info("%s / %s: %s", concept, variant, score)
            if variant == "none":
                before = target
            if variant == cfg.grid_variant:
                after = target
        if before is not None and after is not None and len(examples) < 8:
            step = max(1, len(before.images) // 8)
            examples.append((concept, before.images[::step][:8], after.images[::step][:8]))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": cfg.to_dict(),
        "prompt_following": following,
        "params": {c: params[c] for c in cfg.concepts},
        "saemnesia_params": {c: supervised[c] for c in cfg.concepts if c in supervised},
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "results.json", report)
    table = (
        f"Prompt following without erasure ({following['n_images']} images): object accuracy "
        f"{following['object_accuracy']:.3f}, style accuracy {following['style_accuracy']:.3f}\n\n"
        + _table(results, cfg.variants)
    )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    if examples:
        rows = before_after_rows(examples, ("before", "erased"))
        save_grid(rows, out / "grid.png", label_width=80)
    report["table"] = table
    return report
