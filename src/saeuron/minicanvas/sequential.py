"""Erasing several MiniCanvas concepts, one after another (docs/method.md, sections 5 and 6).

Step n erases the first n concepts of a list together (one ``erase`` call: each concept's
own latents, scale and threshold; a latent two concepts share is edited once, by the
strongest edit). After every step, each listed concept's UA (1 - accuracy on its prompts)
shows whether earlier erasures hold and later ones have not started, and the accuracy on
the concepts of the same kind that are never erased, plus the other head's, is the retention.
With ``extra`` on, each step also reports, over the concepts erased so far, UA on their
test-only other names (UA-alias) and in-scene UA and retention on two-object scenes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.minicanvas.assets import load_params
from saeuron.minicanvas.judge import MiniCanvasJudge, extra_scores, prompt_rows

# The settings live in a torch-free module, which --help reads; they stay importable from here.
from saeuron.minicanvas.sequential_config import DEFAULT_OBJECTS as DEFAULT_OBJECTS
from saeuron.minicanvas.sequential_config import DEFAULT_STYLES as DEFAULT_STYLES
from saeuron.minicanvas.sequential_config import SEQUENTIAL_VARIANTS as SEQUENTIAL_VARIANTS
from saeuron.minicanvas.sequential_config import SequentialConfig
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_TEMPLATES
from saeuron.utils.io import atomic_path, atomic_write_json


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
                    judge.erase_recipes(erased)
                    if cfg.variant == "recipe"
                    else judge.erasing_many(erased, params)
                )
                with ctx:
                    judged = judge.run(rows, batch_size=cfg.batch_size, desc=f"{kind} step {n}")
                    extra = [
                        extra_scores(judge, c, cfg.seeds[:1], cfg.seeds[:1],
                                     batch_size=cfg.batch_size, desc=f"{kind} step {n} {c}")
                        for c in erased
                    ] if cfg.extra else []  # fmt: skip
            else:
                extra = []
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
                **{key: float(np.mean([e[key] for e in extra]))
                   for key in ("UA_alias", "scene_UA", "scene_retention") if extra},
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
    extras = [("UA_alias", "UA-alias"), ("scene_UA", "scene UA"),
              ("scene_retention", "scene ret.")] if cfg.extra else []  # fmt: skip
    parts = []
    for kind, names in (("style", cfg.styles), ("object", cfg.objects)):
        head = " | ".join([*names, "retention", "cross", *(label for _, label in extras)])
        lines = [
            f"UA of each {kind} after erasing the first n (retention: {kind} accuracy on the "
            f"{kind}s never erased; cross: the other head's accuracy"
            + ("; UA-alias and scene scores: means over the erased ones)" if extras else ")"),
            "",
            f"| n | {head} |",
            "|---" * (len(names) + 3 + len(extras)) + "|",
        ]
        for n, step in enumerate(results[kind]):
            cells = [f"**{step['UA'][c]:.2f}**" if c in step["erased"] else f"{step['UA'][c]:.2f}"
                     for c in names]  # fmt: skip
            cells += [f"{step['retention']:.2f}", f"{step['cross']:.2f}"]
            cells += [f"{step[key]:.2f}" if key in step else "-" for key, _ in extras]
            lines.append(f"| {n} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
