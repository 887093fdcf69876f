"""SAEmnesia on MiniCanvas: a supervised SAE per hookpoint, and its one-knob tuning.

Layout inside the bundled model folder::

    supervised/saes/<hookpoint>/{cfg.json, sae.safetensors, saeuron.json, supervised.json}
    supervised/saes/<hookpoint>/features/<concept>.{safetensors,json}   one latent each
    supervised/params.json     per-concept multiplier (the only tuned value)

Both hookpoints' SAEs are supervised on all 20 concepts (object and style labels of each
anchor prompt), so the object/style decorrelation term has both kinds to keep apart; an
object is erased at the object hookpoint and a style at the style one, as in SAeUron.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from saeuron.minicanvas.assets import (
    OBJECT_HOOKPOINT,
    STYLE_HOOKPOINT,
    SUPERVISED_SAES,
    capture_anchor_activations,
    recorded_settings,
    writable_bundle_folder,
)

# The settings live in a torch-free module, which --help reads; they stay importable from here.
from saeuron.minicanvas.saemnesia_config import SupervisedBuildConfig
from saeuron.minicanvas.world import (
    OBJECTS,
    STYLES,
    anchor_prompts,
)
from saeuron.training.supervised import SupervisedTrainConfig, train_supervised
from saeuron.utils.files import BUNDLE_SUPERVISED_DIR
from saeuron.utils.io import atomic_path, atomic_write_json, make_json_portable

logger = logging.getLogger(__name__)

# Seven values, the paper's trial count, spread over the range where unsupervised
# MiniCanvas winners fell (gamma -1 to -30) plus one stronger.


def write_labels(path: Path) -> Path:
    """The anchor prompts' object and style, one row per prompt in capture order."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "object", "style"])
        for prompt, obj, style in anchor_prompts():
            writer.writerow([
                prompt,
                OBJECTS[obj] if obj is not None else "",
                STYLES[style] if style is not None else "",
            ])  # fmt: skip
    return path


def build_supervised(cfg: SupervisedBuildConfig) -> dict[str, Any]:
    """Capture the anchor prompts (reused when ``workdir`` holds them) and fine-tune."""
    folder = writable_bundle_folder(cfg.resolved_model, cfg.out)
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="minicanvas-supervised-"))
    work.mkdir(parents=True, exist_ok=True)
    labels = write_labels(work / "anchor_labels.csv")
    summary: dict[str, Any] = {}
    for hookpoint in (OBJECT_HOOKPOINT, STYLE_HOOKPOINT):
        # The assets' capture: a workdir shared with `saeuron minicanvas assets` is reused.
        acts = capture_anchor_activations(
            cfg.resolved_model,
            work,
            hookpoint,
            cfg.num_inference_steps,
            cfg.guidance_scale,
            cfg.seed,
        )
        start = time.perf_counter()
        sae, out = train_supervised(
            SupervisedTrainConfig(
                activations=str(acts), labels=str(labels),
                out=str(folder / SUPERVISED_SAES),
                init_sae=str(folder / "saes" / hookpoint), supervised_lr=cfg.lr,
                max_epochs=cfg.max_epochs, patience=cfg.patience, seed=cfg.seed,
            )
        )  # fmt: skip
        history = sae.meta["supervised"]["history"]
        best = min(history, key=lambda r: r["total"])
        summary[hookpoint] = {
            "epochs": len(history),
            "first": history[0],
            "best": best,
            "seconds": time.perf_counter() - start,
            "assignment": sae.meta["supervised"]["assignment"],
        }
        logger.info("supervised SAE at %s: %s", hookpoint, summary[hookpoint]["best"])
    atomic_write_json(folder / BUNDLE_SUPERVISED_DIR / "build.json",
                      {"settings": recorded_settings(cfg), "hookpoints": summary})  # fmt: skip
    make_json_portable(folder / BUNDLE_SUPERVISED_DIR, {"": folder, work.name: work})
    return summary
