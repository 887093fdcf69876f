"""MiniCanvas with SAEs on what the prompt adds: the ``guidance`` site, a block per concept.

A hookpoint inside the text encoder (``text_encoder.final_layer_norm``) is built
the same way on the encoder's output: the prompt's token embeddings, which every
cross-attention block of every step reads.

Why (measured on MiniCanvas, see the README): the style words act at every cross-attention
block, so an edit at one mid-resolution block is undone by the blocks after it, and the
only place where one block's state decides the picture is the last one; there the output
is dominated by the noise estimate, and an SAE trained on it spends its latents on that.
The conditional minus the unconditional output of the CFG batch leaves the noise out: an
SAE on it (``activation_site="guidance"``) finds latents that fire on one style alone, and
editing them changes the style and keeps the object.

Layout inside the bundled model folder::

    guided/saes/<hookpoint>/...               SAEs trained on the guidance site
    guided/stats/<hookpoint>/<concept>.*      statistics from the SAE's own capture
    guided/build.json                         how they were built

``saeuron tune --model minicanvas`` selects features from these statistics and writes the
bundle's recipes (``recipes/<concept>.json``), which erase with these SAEs.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.minicanvas.assets import (
    recorded_settings,
    writable_bundle_folder,
)

# The settings live in a torch-free module, which --help reads; they stay importable from here.
from saeuron.minicanvas.guided_config import DEFAULT_HOOKPOINTS as DEFAULT_HOOKPOINTS
from saeuron.minicanvas.guided_config import GuidedBuildConfig
from saeuron.minicanvas.world import (
    ANCHOR_TEMPLATES,
    OBJECTS,
    STYLES,
    TEST_ONLY_NAMES,
    UNSTYLED_ANCHORS,
    VALIDATION_NAMES,
    anchor_prompts,
    caption,
)
from saeuron.models.pipelines import load_pipeline
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.sae import Sae, SaeConfig
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.capture_stats import read_label_rows, stats_from_capture
from saeuron.training.trainer import STATE_DIR, TrainConfig, train_sae
from saeuron.utils.files import BUNDLE_GUIDED_DIR, GUIDED_BUILD, TRAIN_LOG
from saeuron.utils.io import (
    atomic_path,
    atomic_write_json,
    make_json_portable,
    read_json_or_empty,
)
from saeuron.utils.text import read_text

logger = logging.getLogger(__name__)

GUIDED_DIR = BUNDLE_GUIDED_DIR
BUILD_FILE = GUIDED_BUILD


def guided_folder(folder: Path) -> Path:
    return folder / GUIDED_DIR


# -- building the SAEs and statistics ------------------------------------------------------


def prefix_vocabulary(tokenizer: Any) -> list[str]:
    """Whole alphabetic words of ``tokenizer``'s vocabulary, no concept name among them:
    the words a prefix is drawn from (an attack searches the same vocabulary)."""
    # Every word of every name: the test-only names must never reach an SAE, and the
    # validation ones are the concept itself.
    names = [*OBJECTS, *STYLES, *TEST_ONLY_NAMES.values(), *VALIDATION_NAMES.values()]
    concepts = {word for n in names for word in n.lower().split()}
    words = (w[: -len("</w>")] for w in tokenizer.get_vocab() if w.endswith("</w>"))
    return sorted(w for w in words if w.isascii() and w.isalpha() and w.lower() not in concepts)


def prefixed_anchor_prompts(
    copies: int, max_words: int, vocabulary: Sequence[str], seed: int
) -> list[tuple[str, int, int | None]]:
    """``copies`` rows per anchor pair and unstyled object: a random anchor phrasing behind
    0 to ``max_words`` random ``vocabulary`` words, labelled like the anchor."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, o in enumerate(OBJECTS):
        for j, s in (*enumerate(STYLES), (None, None)):
            for _ in range(copies):
                templates = ANCHOR_TEMPLATES if s is not None else UNSTYLED_ANCHORS
                prompt = caption(o, s, templates[rng.integers(len(templates))])
                words = rng.choice(vocabulary, rng.integers(max_words + 1)).tolist()
                rows.append((" ".join([*words, prompt]), i, j))
    return rows


def write_prompts_and_labels(
    work: Path, per_pair: int, extra: Sequence[tuple[str, int, int | None]] = (), seed: int = 0
) -> tuple[Path, Path]:
    """The anchor prompts (``per_pair`` phrasings of each pair) and ``extra`` rows, and their
    object/style.

    With ``extra`` rows, all rows are shuffled (seeded by ``seed``): the trainer holds out
    the capture's last shards, which would otherwise hold the last objects' rows alone.
    """
    rows = [*anchor_prompts(per_pair=per_pair), *extra]
    if extra:
        rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    prompts = work / "prompts.txt"
    labels = work / "labels.csv"
    with atomic_path(prompts) as tmp:
        tmp.write_text("\n".join(p for p, _, _ in rows) + "\n", encoding="utf-8")
    with atomic_path(labels) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["prompt", "object", "style"])
        for prompt, obj, style in rows:
            writer.writerow([prompt, OBJECTS[obj] if obj is not None else "",
                             STYLES[style] if style is not None else ""])  # fmt: skip
    return prompts, labels


def build_guided(cfg: GuidedBuildConfig) -> dict[str, Any]:
    """Capture the guidance site at each hookpoint (the output, inside a text encoder),
    train an SAE, write both kinds' stats."""
    folder = guided_folder(writable_bundle_folder(cfg.resolved_model, cfg.out))
    work = Path(cfg.workdir or tempfile.mkdtemp(prefix="minicanvas-guided-"))
    work.mkdir(parents=True, exist_ok=True)
    extra: list[tuple[str, int, int | None]] = []
    if cfg.prefixed_copies:
        vocabulary = prefix_vocabulary(load_pipeline(cfg.resolved_model).tokenizer)
        extra = prefixed_anchor_prompts(cfg.prefixed_copies, cfg.prefix_words, vocabulary,
                                        cfg.seed)  # fmt: skip
    prompts, labels = write_prompts_and_labels(work, cfg.prompts_per_pair, extra, cfg.seed)
    label_rows = read_label_rows(labels)
    # A build of some blocks keeps the record of blocks built before (with their settings).
    summary: dict[str, Any] = read_json_or_empty(folder / BUILD_FILE)
    summary["settings"] = recorded_settings(cfg)
    summary.setdefault("hookpoints", {})
    for hookpoint in cfg.hookpoints:
        start = time.perf_counter()
        site = "output" if prompt_encoder_of(hookpoint) else "guidance"
        acts = work / f"{site}-{hookpoint}"
        # A text encoder gives one row of tokens per prompt, not one per step: small shards,
        # or the whole capture fits one or two and the trainer has none to hold out.
        shard_mb = 2.0 if site == "output" else 16.0
        run_cache(
            CacheConfig.from_dict({
                "model": cfg.model, "hookpoint": hookpoint, "prompts": str(prompts),
                "out": str(acts), "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, "activation_site": site,
                "max_shard_mb": shard_mb, "dtype": "float32", "seed": cfg.seed, "batch_size": 10,
            })
        )  # fmt: skip
        captured = time.perf_counter() - start
        train_sae(
            TrainConfig(
                activations=str(acts), out=str(folder / "saes"),
                sae=SaeConfig(k=cfg.k, expansion_factor=cfg.expansion_factor), topk=cfg.topk,
                batch_size=cfg.batch_size, epochs=cfg.epochs, heldout_fraction=0.1,
                dead_tokens=cfg.dead_tokens, seed=cfg.seed, resume=False,
            )
        )  # fmt: skip
        shutil.rmtree(folder / "saes" / hookpoint / STATE_DIR, ignore_errors=True)
        trained = time.perf_counter() - start - captured
        sae = Sae.from_pretrained(folder / "saes", hookpoint=hookpoint)
        for kind in cfg.kinds_at(hookpoint):
            for name, stats in stats_from_capture(acts, sae, label_rows, kind).items():
                stats.meta["model"] = cfg.model
                stats.save(folder / "stats" / hookpoint / name)
        log = json.loads(read_text(folder / "saes" / hookpoint / TRAIN_LOG, "train log"))
        epochs = log.get("epochs", [])
        summary["hookpoints"][hookpoint] = {
            "capture_seconds": captured,
            "train_seconds": trained,
            "tokens": log.get("train_tokens"),
            "heldout_fvu": epochs[-1].get("heldout_fvu") if epochs else None,
            "settings": {k: v for k, v in recorded_settings(cfg).items() if k != "hookpoints"},
        }
    atomic_write_json(folder / BUILD_FILE, summary)
    # The SAEs' logs and the statistics name the capture and the SAE they came from.
    make_json_portable(folder, {"": folder.parent, work.name: work})
    return summary
