"""What ``saeuron tune`` writes beside ``--out NAME.json``: the recipe with its features, the
trials table (``NAME.trials.csv``) and the trade-off plot (``NAME.tradeoff.png``)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from saeuron.erasure.recipe import (
    Edit,
    Recipe,
    copy_features,
)
from saeuron.eval.tune_config import ATTACKED
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.sites import renamed_settings
from saeuron.utils.io import atomic_path


def site_words(edit: Edit) -> str:
    if prompt_encoder_of(edit.hookpoint):
        return f"the text encoder ({edit.hookpoint})"
    site = "guidance (cond - uncond)" if edit.activation_site == "guidance" else "output"
    return f"the denoiser block {edit.hookpoint} ({site})"


def write_recipe(recipe: Recipe, out: Path, work: Path) -> Path:
    """``recipe`` at ``out``, its features copied into ``features/`` beside it and every path
    made relative to it (so the folder moves as one)."""
    base = out.parent.resolve()
    for entry in recipe.concepts.values():
        for edit in entry.edits:
            for ref in (edit.features, *(a.features for a in edit.anchors)):
                source = Path(ref.path)
                target = base / "features" / source.relative_to(work)
                copy_features(source, target)
                ref.path = os.path.relpath(target, base)
            if edit.sae.path:
                edit.sae.path = os.path.relpath(Path(edit.sae.path).resolve(), base)
    return recipe.save(out)


def write_trials(trials: Sequence[Any], path: Path) -> Path:
    # A study begun before a setting was renamed holds trials under either name: one column.
    settings = {t.number: renamed_settings(t.user_attrs.get("setting", {})) for t in trials}
    keys = sorted({k for s in settings.values() for k in s})
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["trial", "objective", *keys, "UA", "IRA", "CRA", ATTACKED, "n_images",
                         "seconds"])  # fmt: skip
        for t in sorted(trials, key=lambda t: t.number):
            s, sc = settings[t.number], t.user_attrs.get("scores", {})
            writer.writerow([t.number, f"{t.value:.4f}", *(s.get(k, "") for k in keys),
                             *(f"{sc.get(m, float('nan')):.3f}" for m in ("UA", "IRA", "CRA")),
                             f"{sc[ATTACKED]:.3f}" if ATTACKED in sc else "",
                             sc.get("n_images", ""), t.user_attrs.get("seconds", "")])  # fmt: skip
    return path


def plot_tradeoff(trials: Sequence[Any], best: int, path: Path, concept: str) -> Path:
    """UA (x) against mean retention (y) per trial, the chosen one ringed: a PNG."""
    size, pad = 420, 48
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    span = size - 2 * pad

    def at(x: float, y: float) -> tuple[float, float]:
        return pad + x * span, size - pad - y * span

    draw.rectangle([pad, pad, size - pad, size - pad], outline="black")
    for tick in (0.0, 0.5, 1.0):
        x, y = at(tick, tick)
        draw.text((x - 8, size - pad + 6), f"{tick:.1f}", fill="black")
        draw.text((6, y - 6), f"{tick:.1f}", fill="black")
    draw.text((size / 2 - 70, size - 20), "UA (forgetting)", fill="black")
    draw.text((6, 8), f"retention (mean IRA, CRA): tune {concept}", fill="black")
    for t in trials:
        sc = t.user_attrs.get("scores", {})
        kept = [v for v in (sc.get("IRA"), sc.get("CRA")) if v is not None and not math.isnan(v)]
        if sc.get("UA") is None or not kept:
            continue
        x, y = at(float(sc["UA"]), float(np.mean(kept)))
        r = 7 if t.number == best else 3
        colour = "red" if t.number == best else "steelblue"
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour,
                     fill=None if t.number == best else colour)  # fmt: skip
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
