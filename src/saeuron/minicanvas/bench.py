"""The MiniCanvas benchmark: every concept erased in turn, every variant side by side.

Variants compared in the same run, by default: no erasure, the published method
(``preset="paper"``), the default recipes and SAEmnesia; on request also the concept as
negative prompt, SAeUron editing both CFG halves and SAeUron with the published error term.
Scores are those of :mod:`saeuron.minicanvas.judge`: UA / IRA / CRA on single-object
prompts, UA on the concepts' test-only other names (UA-alias), and in-scene UA and
retention on two-object scenes.
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
    extra_scores,
    prompt_following,
    prompt_rows,
    scene_following,
    scene_rows,
    scores,
    split_baseline,
)
from saeuron.minicanvas.world import (
    NAMINGS,
    OBJECTS,
    SCENE_TEST_TEMPLATES,
    STYLES,
    TEST_SEEDS,
    TEST_TEMPLATES,
    name,
)
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.images import before_after_rows, save_grid
from saeuron.utils.io import atomic_path, atomic_write_json, check_output_folder

logger = logging.getLogger(__name__)

# A regression guard for CI: concepts whose erasure met the quick test's bounds (UA up by at
# least 0.5, IRA and CRA at least 0.8) at its 10 steps and 2 seeds; the full benchmark in the
# README reports every concept, those the method does not yet erase well included.
QUICK_CONCEPTS = ("moon", "triangle", "checkered")
DEFAULT_VARIANTS = ("none", "saeuron", "recipe", "saemnesia")


@dataclass
class BenchConfig(Config):
    out: str = field("minicanvas-bench", help="folder for results.json, results.md, grid.png")
    quick: bool = field(False, help="a CI-sized subset: 3 concepts, 2 variants, 2 seeds, 10 steps")
    concepts: list[str] | None = field(None, help="concepts to erase; default: all 20")
    variants: list[str] | None = field(
        None,
        help="rows of the table; default: none, saeuron (the published method), recipe "
        "(the default), saemnesia",
    )
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
        "recipe", choices=VARIANTS, help="the variant whose erased images grid.png shows"
    )
    template: str = field(
        TEST_TEMPLATES[0], help="prompt template with {object} and {style} (held-out phrasings)"
    )
    alias_seeds: int = field(
        2, ge=0, le=100, help="test seeds for the other-name prompts (UA-alias); 0: none"
    )
    scene_seeds: int = field(
        2, ge=0, le=100, help="test seeds for the two-object scenes (10 per seed); 0: none"
    )
    scene_template: str = field(
        SCENE_TEST_TEMPLATES[0], help="scene template with {object}, {object2} and {style}"
    )

    def __post_init__(self) -> None:
        if "{object}" not in self.template or "{style}" not in self.template:
            raise ConfigError(
                "template", f"got {self.template!r}; it needs {{object}} and {{style}}"
            )
        if any(f"{{{k}}}" not in self.scene_template for k in ("object", "object2", "style")):
            raise ConfigError(
                "scene_template",
                f"got {self.scene_template!r}; it needs {{object}}, {{object2}} and {{style}}",
            )
        if self.quick:
            self.concepts = self.concepts or list(QUICK_CONCEPTS)
            self.variants = self.variants or ["none", "saeuron"]
            self.num_inference_steps = min(self.num_inference_steps, 10)
            self.seeds = self.seeds or list(TEST_SEEDS[:2])
            self.alias_seeds, self.scene_seeds = min(self.alias_seeds, 1), min(self.scene_seeds, 1)
        self.concepts = self.concepts or [*OBJECTS, *STYLES]
        self.variants = self.variants or list(DEFAULT_VARIANTS)
        if "none" not in self.variants:
            self.variants.insert(0, "none")
        self.seeds = self.seeds or list(TEST_SEEDS)
        for concept in self.concepts:
            concept_kind(concept)
        for variant in self.variants:
            if variant not in VARIANTS:
                raise ConfigError("variants", f"got {variant!r}; allowed: {', '.join(VARIANTS)}")
        check_range("retain_seeds", self.retain_seeds, ge=1, le=len(self.seeds))
        check_range("alias_seeds", self.alias_seeds, ge=0, le=len(self.seeds))
        check_range("scene_seeds", self.scene_seeds, ge=0, le=len(self.seeds))
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("batch_size", self.batch_size, ge=1)
        check_output_folder(self.out, "out")


COLUMNS = (
    ("UA", "UA"), ("IRA", "IRA"), ("CRA", "CRA"), ("UA_alias", "UA-alias"),
    ("scene_UA", "scene UA"), ("scene_retention", "scene ret."),
)  # fmt: skip


def _table(results: dict[str, dict[str, dict[str, float]]], variants: Sequence[str]) -> str:
    metrics = [m for m, _ in COLUMNS if any(m in r for rs in results.values() for r in rs.values())]
    labels = dict(COLUMNS)
    head = [f"{kind} {labels[m]}" for kind in ("style", "object") for m in metrics]
    lines = ["| variant | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for variant in variants:
        cells = []
        for kind in ("style", "object"):
            rows = [
                r[variant] for c, r in results.items() if concept_kind(c) == kind and variant in r
            ]
            for metric in metrics:
                values = [r[metric] for r in rows if metric in r]
                cells.append(f"{np.mean(values):.3f}" if values else "-")
        lines.append(f"| {VARIANT_LABELS[variant]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _following_by_name(
    judge: MiniCanvasJudge, cfg: BenchConfig
) -> dict[str, dict[str, float]]:
    """Prompt following of the unerased model with each naming of the concepts (every pair,
    the first test seed) and on two-object scenes."""
    seed = cfg.seeds[:1]
    result = {}
    for naming in NAMINGS[1:]:
        rows = [
            (cfg.template.format(object=name(OBJECTS[o], naming), style=name(STYLES[s], naming)),
             o, s, seed_)
            for _, o, s, seed_ in prompt_rows(cfg.template, seed)
        ]  # fmt: skip
        result[naming] = prompt_following(judge.run(rows, batch_size=cfg.batch_size, desc=naming))
    if cfg.scene_seeds:
        scenes = [
            row for c in OBJECTS for row in scene_rows(c, seed, cfg.scene_template)
        ]
        result["scenes"] = scene_following(
            judge.run_scenes(scenes, cfg.batch_size, "scene following")
        )
    return result


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    start = time.perf_counter()
    judge = MiniCanvasJudge(cfg.model, cfg.num_inference_steps, cfg.guidance_scale)
    params = load_params(judge.folder)
    supervised = {}
    if "saemnesia" in cfg.variants:
        supervised = load_supervised_params(judge.folder)
    results: dict[str, dict[str, dict[str, float]]] = {}
    examples = []
    # The grid shows the asked-for variant, or the last one measured when it is not.
    shown = cfg.grid_variant if cfg.grid_variant in cfg.variants else cfg.variants[-1]
    # Unerased images do not depend on the concept: sample every pair once and share them.
    all_rows = prompt_rows(cfg.template, cfg.seeds)
    baseline = judge.run(all_rows, batch_size=cfg.batch_size, desc="no erasure")
    baseline_seeds = np.array([row[3] for row in all_rows])
    following = prompt_following(baseline)
    by_name = _following_by_name(judge, cfg) if cfg.alias_seeds or cfg.scene_seeds else {}
    logger.info("prompt following: %s; by name and in scenes: %s", following, by_name)
    alias_seeds, scene_seeds = cfg.seeds[: cfg.alias_seeds], cfg.seeds[: cfg.scene_seeds]
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
                score.update(
                    extra_scores(
                        judge, concept, alias_seeds, scene_seeds, cfg.template,
                        cfg.scene_template, cfg.batch_size, f"{concept}/none",
                    )
                )  # fmt: skip
            else:
                chosen = {"saemnesia": supervised}.get(variant, params).get(concept, {})
                score, target = evaluate(
                    judge, concept, variant, chosen, cfg.seeds, cfg.retain_seeds,
                    template=cfg.template, batch_size=cfg.batch_size,
                    retain_every=cfg.retain_every, alias_seeds=alias_seeds,
                    scene_seeds=scene_seeds, scene_template=cfg.scene_template,
                )  # fmt: skip
            results[concept][variant] = score
            logger.info("%s / %s: %s", concept, variant, score)
            if variant == "none":
                before = target
            if variant == shown:
                after = target
        if before is not None and after is not None and len(examples) < 8:
            step = max(1, len(before.images) // 8)
            examples.append((concept, before.images[::step][:8], after.images[::step][:8]))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "config": cfg.to_dict(),
        "prompt_following": following,
        "prompt_following_by_name": by_name,
        "params": {c: params[c] for c in cfg.concepts},
        "saemnesia_params": {c: supervised[c] for c in cfg.concepts if c in supervised},
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out / "results.json", report)
    table = (
        f"Prompt following without erasure ({following['n_images']} images): object accuracy "
        f"{following['object_accuracy']:.3f}, style accuracy {following['style_accuracy']:.3f}\n"
        + "".join(
            f"- {naming} names: object {f['object_accuracy']:.3f}, style "
            f"{f['style_accuracy']:.3f} ({f['n_images']} images)\n"
            for naming, f in by_name.items() if naming != "scenes"
        )
        + (
            f"- two-object scenes: both objects {by_name['scenes']['both_objects']:.3f}, each "
            f"object {by_name['scenes']['each_object']:.3f}, style "
            f"{by_name['scenes']['style_accuracy']:.3f} ({by_name['scenes']['n_scenes']} "
            "scenes)\n" if "scenes" in by_name else ""
        )
        + "\n" + _table(results, cfg.variants)
    )
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    if examples:
        rows = before_after_rows(examples, ("before", "erased"))
        save_grid(rows, out / "grid.png", label_width=80)
    report["table"] = table
    return report
