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
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from saeuron.minicanvas.assets import load_params, load_supervised_params
from saeuron.minicanvas.bench_config import (
    DEFAULT_VARIANTS,
    QUICK_CONCEPTS,
    VARIANT_LABELS,
    VARIANTS,
    BenchConfig,
)
from saeuron.minicanvas.judge import (
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
from saeuron.minicanvas.world import NAMINGS, OBJECTS, STYLES, concept_kind, name
from saeuron.utils.images import before_after_rows, save_grid
from saeuron.utils.io import atomic_path, atomic_write_json

# The settings and the variants are re-exported from the torch-free module that --help reads.
__all__ = [
    "COLUMNS",
    "DEFAULT_VARIANTS",
    "QUICK_CONCEPTS",
    "VARIANTS",
    "VARIANT_LABELS",
    "BenchConfig",
    "run_bench",
]

logger = logging.getLogger(__name__)

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
    judge = MiniCanvasJudge(cfg.resolved_model, cfg.num_inference_steps, cfg.guidance_scale)
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
