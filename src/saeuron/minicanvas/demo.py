"""``saeuron demo``: erase one object and one style from the bundled MiniCanvas model.

Writes a before/after grid and prints unlearning accuracy (UA: the erased concept is gone)
and in-domain retention accuracy (IRA: the other concepts of its kind survive), judged by
the bundled classifier on a small prompt set.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from saeuron.erasure.technique import bundle_recipe
from saeuron.minicanvas.assets import load_params
from saeuron.minicanvas.demo_config import DEMO_VARIANTS, DemoConfig
from saeuron.minicanvas.judge import MiniCanvasJudge, _concept_index, prompt_rows, scores
from saeuron.minicanvas.world import TEST_TEMPLATES
from saeuron.models.progress import StepProgress
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.utils.images import before_after_rows, save_grid

# The settings are re-exported from the torch-free module that --help reads.
__all__ = ["DEMO_VARIANTS", "DemoConfig", "DemoRow", "run_demo", "settings_text"]


@dataclass
class DemoRow:
    concept: str
    params: dict[str, Any]
    scores_before: dict[str, float]
    scores_after: dict[str, float]


def run_demo(cfg: DemoConfig) -> tuple[list[DemoRow], float]:
    start = time.perf_counter()
    judge = MiniCanvasJudge("minicanvas", steps=cfg.steps)
    params = load_params(judge.folder)
    rows, panels = [], []
    sets = {}
    for concept in (cfg.object, cfg.style):
        index = _concept_index(concept)
        target = prompt_rows(TEST_TEMPLATES[0], [cfg.seed], only=index)
        others = prompt_rows(TEST_TEMPLATES[0], [cfg.seed], only=index, exclude=True)
        sets[concept] = target, others[:: max(1, len(others) // cfg.retain)][: cfg.retain]
    # One bar for the whole job: every set is sampled before and under each erasure, in
    # batches of up to 50 images.
    runs = 1 + len(cfg.variants)
    calls = sum(runs * (-(-len(t) // 50) + -(-len(r) // 50)) for t, r in sets.values())
    with StepProgress(calls * cfg.steps, desc="demo") as bar:
        for concept, (target, retain) in sets.items():
            before_t, before_r = judge.run(target, progress=bar), judge.run(retain, progress=bar)
            for variant in cfg.variants:
                if variant == "recipe":
                    recipe = bundle_recipe(judge.folder, [concept])
                    shown = {"variant": variant, "recipe": recipe}
                    ctx: Any = judge.erase_recipes([concept])
                else:
                    p = params[concept]
                    shown = {"variant": variant, **p}
                    ctx = judge.erase(
                        concept, int(p["tau"]), float(p["multiplier"]),
                        max_other_ratio=p.get("max_other_ratio"),
                    )  # fmt: skip
                with ctx:
                    after_t = judge.run(target, progress=bar)
                    after_r = judge.run(retain, progress=bar)
                rows.append(
                    DemoRow(
                        concept, shown, scores(concept, before_t, before_r),
                        scores(concept, after_t, after_r),
                    )
                )  # fmt: skip
                label = "default" if variant == "recipe" else "paper"
                panels.append((f"erase {concept!r} ({label})", before_t.images, after_t.images))
                panels.append((f"others ({concept}, {label})", before_r.images[:10],
                               after_r.images[:10]))  # fmt: skip
    save_grid(before_after_rows(panels), cfg.out)
    return rows, time.perf_counter() - start


def settings_text(params: dict[str, Any]) -> str:
    """A concept's erasure settings, as the demo prints them."""
    recipe = params.get("recipe")
    if recipe is not None:
        edits = [e for c in recipe.concepts.values() for e in c.edits]
        where = " + ".join(
            "text encoder" if prompt_encoder_of(e.hookpoint) else e.hookpoint for e in edits
        )
        rule = edits[0].rule + (f" into {edits[0].anchors[0].concept}" if edits[0].anchors else "")
        strengths = ", ".join(f"{e.strength:g}" for e in edits)
        return f"default recipe: {rule} at {where}, strength {strengths}"
    text = f"paper: tau {params['tau']}, multiplier {params['multiplier']}"
    if params.get("max_other_ratio") is not None:
        text += f", max_other_ratio {params['max_other_ratio']}"
    return text
