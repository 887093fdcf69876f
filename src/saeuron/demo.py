"""``saeuron demo``: erase one object and one style from the bundled MiniCanvas model.

Writes a before/after grid and prints unlearning accuracy (UA: the erased concept is gone)
and in-domain retention accuracy (IRA: the other concepts of its kind survive), judged by
the bundled classifier on a small prompt set.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Any

from .config import Config, ConfigError, check_range, field
from .grid import before_after_rows, save_grid


@dataclass
class DemoConfig(Config):
    out: str = field("demo.png", help="before/after grid image (.png)")
    object: str = field("moon", help="MiniCanvas object to erase")
    style: str = field("checkered", help="MiniCanvas style to erase")
    steps: int = field(20, help="DDIM steps")
    seed: int = field(188, help="seed of the sampled images")
    retain: int = field(20, help="images of other concepts used for retention accuracy")

    def __post_init__(self) -> None:
        from .minicanvas.assets import concept_kind

        if not self.out.lower().endswith(".png"):
            raise ConfigError("out", f"got {self.out!r}; must end in .png")
        if concept_kind(self.object) != "object":
            raise ConfigError("object", f"{self.object!r} is a style, not an object")
        if concept_kind(self.style) != "style":
            raise ConfigError("style", f"{self.style!r} is an object, not a style")
        check_range("steps", self.steps, ge=1)
        check_range("retain", self.retain, ge=1, le=90)


@dataclass
class DemoRow:
    concept: str
    params: dict[str, Any]
    scores_before: dict[str, float]
    scores_after: dict[str, float]


def run_demo(cfg: DemoConfig) -> tuple[list[DemoRow], float]:
    from .minicanvas.assets import load_params
    from .minicanvas.bench import MiniCanvasJudge, _concept_index, prompt_rows, scores
    from .minicanvas.world import TEST_TEMPLATES

    start = time.perf_counter()
    judge = MiniCanvasJudge("minicanvas", steps=cfg.steps)
    params = load_params(judge.folder)
    rows, panels = [], []
    for concept in (cfg.object, cfg.style):
        index = _concept_index(concept)
        target = prompt_rows(TEST_TEMPLATES[0], [cfg.seed], only=index)
        others = prompt_rows(TEST_TEMPLATES[0], [cfg.seed], only=index, exclude=True)
        retain = others[:: max(1, len(others) // cfg.retain)][: cfg.retain]
        before_t, before_r = judge.run(target), judge.run(retain)
        p = params[concept]
        with judge.erasing(
            concept, int(p["tau"]), float(p["multiplier"]),
            max_other_ratio=p.get("max_other_ratio"),
        ):  # fmt: skip
            after_t, after_r = judge.run(target), judge.run(retain)
        rows.append(
            DemoRow(
                concept, p, scores(concept, before_t, before_r), scores(concept, after_t, after_r)
            )
        )
        panels.append((f"erase {concept!r}", before_t.images, after_t.images))
        panels.append((f"others ({concept})", before_r.images[:10], after_r.images[:10]))
    save_grid(before_after_rows(panels), cfg.out)
    return rows, time.perf_counter() - start


def _settings(params: dict[str, Any]) -> str:
    text = f"tau {params['tau']}, multiplier {params['multiplier']}"
    if params.get("max_other_ratio") is not None:
        text += f", max_other_ratio {params['max_other_ratio']}"
    return text


def _handle(args: argparse.Namespace) -> int:
    cfg = DemoConfig.from_args(args)
    rows, seconds = run_demo(cfg)
    for row in rows:
        b, a = row.scores_before, row.scores_after
        print(
            f"erase {row.concept!r} ({_settings(row.params)}): UA {b['UA']:.2f} -> {a['UA']:.2f}, "
            f"IRA {b['IRA']:.2f} -> {a['IRA']:.2f}, CRA {b['CRA']:.2f} -> {a['CRA']:.2f}"
        )
    print(f"wrote {cfg.out} in {seconds:.1f} s")
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo", help="erase an object and a style from the bundled model; before/after grid"
    )
    DemoConfig.add_arguments(parser)
    parser.set_defaults(handler=_handle)
