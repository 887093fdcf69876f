"""Erasing several MiniCanvas concepts, one after another (docs/method.md, sections 5 and 6).

Step n erases the first n concepts of a list together (one ``erase`` call: each concept's
own latents, scale and threshold; a latent two concepts share is edited once, by the
strongest edit). After every step, each listed concept's UA (1 - accuracy on its prompts)
shows whether earlier erasures hold and later ones have not started, and the accuracy on
the concepts of the same kind that are never erased, plus the other head's, is the retention.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.minicanvas.assets import concept_kind, load_params
from saeuron.minicanvas.judge import MiniCanvasJudge, prompt_rows
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_SEEDS, TEST_TEMPLATES
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.io import atomic_path, atomic_write_json, check_output_folder

DEFAULT_STYLES = ("striped", "checkered", "diagonal", "grainy", "outlined", "pastel")
DEFAULT_OBJECTS = ("moon", "triangle", "heart", "square", "arrow", "star")
SEQUENTIAL_VARIANTS = ("saeuron", "recipe")


@dataclass
class SequentialConfig(Config):
    out: str = field("minicanvas-sequential", help="folder for results.json and results.md")
    styles: list[str] = field(list(DEFAULT_STYLES), help="styles erased one after another")
    objects: list[str] = field(list(DEFAULT_OBJECTS), help="objects erased one after another")
    seeds: list[int] = field(
        list(TEST_SEEDS[:1]), ge=0, le=2**63 - 1, help="seeds of every (object, style) prompt"
    )
    num_inference_steps: int = field(20, ge=1, le=1000, help="DDIM steps")
    batch_size: int = field(50, ge=1, le=4096, help="images per pipeline call")
    variant: str = field(
        "saeuron",
        choices=SEQUENTIAL_VARIANTS,
        help="'saeuron' (the published method, tuned gamma) or 'recipe' (the default recipes)",
    )

    def __post_init__(self) -> None:
        for kind, names in (("style", self.styles), ("object", self.objects)):
            for name in names:
                if concept_kind(name) != kind:
                    raise ConfigError(f"{kind}s", f"{name!r} is not a MiniCanvas {kind}")
            if len(set(names)) != len(names):
                raise ConfigError(f"{kind}s", "each concept once")
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        if not self.seeds:
            raise ConfigError("seeds", "give at least one seed")
        check_output_folder(self.out, "out")


def _accuracy(truth: np.ndarray, predicted: np.ndarray, mask: np.ndarray) -> float:
    return float((truth[mask] == predicted[mask]).mean()) if mask.any() else float("nan")


def run_sequential(cfg: SequentialConfig) -> dict[str, Any]:
    start = time.perf_counter()
    judge = MiniCanvasJudge(steps=cfg.num_inference_steps)
    params = load_params(judge.folder)
    rows = prompt_rows(TEST_TEMPLATES[0], cfg.seeds)
    results: dict[str, list[dict[str, Any]]] = {}
    for kind, names in (("style", cfg.styles), ("object", cfg.objects)):
        world = STYLES if kind == "style" else OBJECTS
        index = {c: world.index(c) for c in names}
        kept = [c for c in world if c not in names]
        steps = []
        for n in range(len(names) + 1):
            erased = list(names[:n])
            if erased:
                ctx = (
                    judge.erasing_recipes(erased)
                    if cfg.variant == "recipe"
                    else judge.erasing_many(erased, params)
                )
                with ctx:
                    judged = judge.run(rows, batch_size=cfg.batch_size, desc=f"{kind} step {n}")
            else:
                judged = judge.run(rows, batch_size=cfg.batch_size, desc=f"{kind} unerased")
            truth = judged.true_styles if kind == "style" else judged.true_objects
            pred = judged.styles if kind == "style" else judged.objects
            other_truth = judged.true_objects if kind == "style" else judged.true_styles
            other_pred = judged.objects if kind == "style" else judged.styles
            ua = {c: 1 - _accuracy(truth, pred, truth == index[c]) for c in names}
            never = np.isin(truth, [world.index(c) for c in kept])
            steps.append({
                "erased": erased,
                "UA": ua,
                "retention": _accuracy(truth, pred, never),
                "cross": _accuracy(other_truth, other_pred, np.ones_like(truth, dtype=bool)),
            })  # fmt: skip
        results[kind] = steps
    report = {"config": cfg.to_dict(), "results": results,
              "seconds": time.perf_counter() - start}  # fmt: skip
    out = Path(cfg.out)
    atomic_write_json(out / "results.json", report)
    table = _markdown(results, cfg)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(table, encoding="utf-8")
    report["table"] = table
    return report


def _markdown(results: dict[str, list[dict[str, Any]]], cfg: SequentialConfig) -> str:
    parts = []
    for kind, names in (("style", cfg.styles), ("object", cfg.objects)):
        head = " | ".join(names)
        lines = [
            f"UA of each {kind} after erasing the first n (retention: {kind} accuracy on the "
            f"{kind}s never erased; cross: the other head's accuracy)",
            "",
            f"| n | {head} | retention | cross |",
            "|---" * (len(names) + 3) + "|",
        ]
        for n, step in enumerate(results[kind]):
            cells = [f"**{step['UA'][c]:.2f}**" if c in step["erased"] else f"{step['UA'][c]:.2f}"
                     for c in names]  # fmt: skip
            tail = f"{step['retention']:.2f} | {step['cross']:.2f}"
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {tail} |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
