"""What the two MiniCanvas probes (``oracle_patch.py``, ``oracle_text.py``) share: the
prompt pairs, the swapped prompts, the command-line options, loading the bundled model and
scoring the judged images."""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import numpy as np
import torch

from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.world import ANCHOR_TEMPLATES, OBJECTS, STYLES
from saeuron.models.bundles import find_bundle
from saeuron.models.hookpoints import list_hookpoints
from saeuron.models.pipelines import load_pipeline

TEMPLATE = ANCHOR_TEMPLATES[1]
GUIDANCE_SCALE = 7.5
KINDS = ("style", "object")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_probe_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    parser.add_argument("--seed", type=int, default=11, help="sampling seed of every image")
    parser.add_argument("--steps", type=positive, default=steps, help="DDIM steps")
    parser.add_argument("--sets", nargs="+", default=None, metavar="NAME",
                        help="probe only these block sets (names as printed; default: all)")
    parser.add_argument("--limit", type=positive, default=None,
                        help="only the first N of the 25 (object, style) pairs (a quick check)")
    parser.add_argument("--out", default=None, help="JSON file for the results")


def load_minicanvas(parser: argparse.ArgumentParser) -> tuple[Any, MiniCanvasClassifier, list[str]]:
    """The bundled pipeline (float32 on the CPU), its classifier and its attention blocks."""
    torch.set_num_threads(1)
    bundle = find_bundle("minicanvas")
    if bundle is None or bundle.classifier_folder is None:
        parser.error("the bundled minicanvas model (with its classifier) is not installed")
    pipe = load_pipeline("minicanvas", device="cpu", dtype=torch.float32)
    return pipe, MiniCanvasClassifier.load(bundle.classifier_folder), list_hookpoints(pipe)


def pick_sets(
    parser: argparse.ArgumentParser, sets: dict[str, list[str]], names: list[str] | None
) -> dict[str, list[str]]:
    if not names:
        return sets
    unknown = sorted(set(names) - set(sets))
    if unknown:
        parser.error(f"--sets: unknown {unknown}; choose from {list(sets)}")
    return {name: blocks for name, blocks in sets.items() if name in names}


def probe_pairs(limit: int | None) -> list[tuple[int, int]]:
    """25 (object, style) index pairs, every style with two or three objects."""
    pairs = [(o, s) for o, s in itertools.product(range(10), range(10)) if (o + s) % 4 == 0]
    return pairs[:limit] if limit else pairs


def prompts(pairs: list[tuple[int, int]], kind: str) -> tuple[list[str], list[str]]:
    """The pairs' prompts, and the same with the ``kind`` concept swapped for its neighbour."""
    orig = [TEMPLATE.format(object=OBJECTS[o], style=STYLES[s]) for o, s in pairs]
    if kind == "style":
        swapped = [TEMPLATE.format(object=OBJECTS[o], style=STYLES[(s + 1) % 10])
                   for o, s in pairs]  # fmt: skip
    else:
        swapped = [TEMPLATE.format(object=OBJECTS[(o + 1) % 10], style=STYLES[s])
                   for o, s in pairs]  # fmt: skip
    return orig, swapped


def swap_scores(
    kind: str, pairs: list[tuple[int, int]], o: np.ndarray, s: np.ndarray
) -> tuple[float, float, float]:
    """Share of images whose ``kind`` concept is no longer the prompt's (UA), that keep the
    other attribute, and whose ``kind`` concept became the swapped-in neighbour."""
    true_o = np.array([p[0] for p in pairs])
    true_s = np.array([p[1] for p in pairs])
    if kind == "style":
        ua, keep, to_anchor = s != true_s, o == true_o, s == (true_s + 1) % 10
    else:
        ua, keep, to_anchor = o != true_o, s == true_s, o == (true_o + 1) % 10
    return float(ua.mean()), float(keep.mean()), float(to_anchor.mean())
