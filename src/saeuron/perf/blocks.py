"""``saeuron bench blocks``: which block of a denoiser to put the SAE on, measured.

For each block the whole method runs as a user would run it: activations of the concept's
prompts and of neutral prompts are captured (``saeuron cache``), a small SAE is trained on
them (``saeuron train``), the concept's features are found against the neutral prompts
(SAeUron's contrastive scores), and held-out prompts are sampled with and without the
erasure, same seeds. Per block:

- ``effect``: mean absolute pixel change (0-255) the erasure makes on held-out prompts of
  the concept;
- ``collateral``: the same on held-out neutral prompts;
- ``selectivity`` = effect / collateral, the ranking (an erasure should move its concept's
  images and leave the others);
- the SAE's held-out fraction of variance unexplained (FVU).

On a real model this picks the block for a model without a published SAE. On the tiny
random-weight pipelines it shows that every block runs the whole chain; their ranking says
nothing about a trained model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.concepts.prompts import concept_prompts
from saeuron.erasure.edit_parts import GuidanceHalf, Strength, Tau
from saeuron.erasure.erase import erase
from saeuron.minicanvas.config_parts import SaeSize
from saeuron.models.hookpoints import list_hookpoints, resolve_module
from saeuron.models.model_part import ModelKey
from saeuron.models.pipelines import load_pipeline
from saeuron.models.resolve import ResolvedModel, ResolvesModel
from saeuron.models.sampling import SamplingConfig, seed_generators
from saeuron.sae import Sae
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.capture_config import ShardSize
from saeuron.training.train_config import Epochs
from saeuron.training.trainer import TrainConfig, Trainer
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_parts import Concept, Output
from saeuron.utils.files import TRAIN_LOG
from saeuron.utils.io import atomic_write, atomic_write_json, check_output_folder
from saeuron.utils.prompts import neutral_prompts

logger = logging.getLogger(__name__)

RESULTS_JSON = "blocks.json"
RESULTS_MD = "blocks.md"


@dataclass
class BlockSweepConfig(ResolvesModel, Config):
    """Settings of ``saeuron bench blocks``."""

    model_name: ModelKey = field(
        ModelKey,
        flatten=True,
        help="the model",
        required=("model",),
        describe={"model": "pipeline: tiny-sd3, tiny-flux, tiny-pixart, a folder or a hub id"},
    )
    erased: Concept = field(Concept(concept="a cat"), flatten=True, help="the concept",
                            required=("concept",),
                            describe={"concept": "the concept erased at every block"})
    blocks: list[str] | None = field(
        None, help="hookpoints to compare; default: every block the denoiser lists"
    )
    train_prompts: int = field(
        16, ge=2, le=10_000, help="prompts of the concept, and as many neutral ones, captured"
    )
    eval_prompts: int = field(
        4, ge=1, le=1000, help="held-out prompts of the concept, and as many neutral ones"
    )
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")
    size: SaeSize = field(
        SaeSize(k=8, expansion_factor=4), flatten=True, help="the SAEs' size",
        describe={"expansion_factor": "SAE latents = width x this",
                  "k": "SAE active latents per token"},
        limits={"expansion_factor": {"ge": 1, "le": 256}, "k": {"ge": 1}},
    )  # fmt: skip
    training: Epochs = field(
        Epochs(epochs=2),
        flatten=True,
        help="SAE training",
        describe={"epochs": "SAE training passes over the capture"},
        limits={"epochs": {"ge": 1, "le": 1000}},
    )
    sae_batch_size: int = field(256, ge=1, help="SAE training tokens per step")
    shards: ShardSize = field(
        ShardSize,
        flatten=True,
        help="the capture's shards",
        describe={
            "max_shard_mb": "capture shard size in MiB; the SAE's held-out FVU needs 2 shards "
            "or more"
        },
    )
    kept_top: Tau = field(
        Tau(tau=2),
        flatten=True,
        help="features kept",
        describe={"tau": "features kept per step"},
        limits={"tau": {"le": 10_000}},
    )
    strength: Strength = field(
        Strength(multiplier=-20.0),
        flatten=True,
        help="gamma",
        describe={"multiplier": "gamma of the erasure"},
    )
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows read and edited",
        describe={"guidance_half": "rows read and edited under CFG (see saeuron cache)"},
    )
    output: Output = field(
        Output(out="benchmarks/blocks"),
        flatten=True,
        help="where the results go",
        describe={"out": f"folder for {RESULTS_JSON}, {RESULTS_MD}, work"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "tau", "multiplier", "out")
        if not self.model.strip() or not self.concept.strip():
            raise ConfigError("model" if not self.model.strip() else "concept", "must not be empty")
        check_output_folder(self.out, "out")
        self.sampling = self.sampling.resolved(self._resolve_model())
        available = len(neutral_prompts())
        if self.train_prompts + self.eval_prompts > available:
            raise ConfigError(
                "train_prompts",
                f"train_prompts + eval_prompts must be <= {available} (the neutral prompts)",
            )


def _write_lines(path: Path, lines: list[str]) -> Path:
    return atomic_write(path, lambda p: p.write_text("\n".join(lines) + "\n", encoding="utf-8"))


def _images(pipe: Any, prompts: list[str], sampling: SamplingConfig) -> np.ndarray:
    images = []
    for start in range(0, len(prompts), sampling.batch_size):
        batch = prompts[start : start + sampling.batch_size]
        seeds = range(sampling.seed + start, sampling.seed + start + len(batch))
        out = pipe(
            batch, generator=seed_generators(seeds), output_type="np", **sampling.call_kwargs()
        )
        images.append(np.asarray(out.images, dtype=np.float64))
    return np.concatenate(images) * 255.0


def _held_out_fvu(folder: Path) -> float | None:
    log = folder / TRAIN_LOG
    if not log.is_file():
        return None
    epochs = json.loads(log.read_text(encoding="utf-8")).get("epochs") or []
    value = epochs[-1].get("heldout_fvu") if epochs else None
    return float(value) if value is not None else None


class _Prompts(NamedTuple):
    """The sweep's prompt files (capture, concept, neutral) and its held-out prompts with
    their unerased images."""

    capture: Path
    concept: Path
    neutral: Path
    held_concept: list[str]
    held_neutral: list[str]
    plain_concept: np.ndarray
    plain_neutral: np.ndarray


def sweep_blocks(cfg: BlockSweepConfig) -> dict[str, Any]:
    """Run the sweep; writes ``OUT/blocks.json`` and ``OUT/blocks.md`` and returns the rows,
    best block first."""
    out = Path(cfg.out)
    pipe = load_pipeline(cfg.resolved_model, device=cfg.sampling.device)
    blocks = cfg.blocks or list_hookpoints(pipe)
    for block in blocks:
        resolve_module(pipe, block)  # a bad name fails before any work
    prompts = _prompts(cfg, pipe, out)
    rows = []
    for block in blocks:
        start = time.perf_counter()
        work = out / "work" / block
        sae = _train_block_sae(cfg, block, prompts.capture, work)
        rows.append(_erase_with(cfg, pipe, sae, block, prompts, work))
        rows[-1]["seconds"] = time.perf_counter() - start
        logger.info("%s: effect %.3f, collateral %.3f", block, rows[-1]["effect"],
                    rows[-1]["collateral"])  # fmt: skip
        del sae
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows.sort(key=lambda r: -r["selectivity"])
    result = {
        "model": cfg.model,
        "config": cfg.to_dict(),
        "blocks": rows,
        "best": rows[0]["block"] if rows else None,
        "table": _table(cfg, rows),
    }
    atomic_write_json(out / RESULTS_JSON, result)
    atomic_write(out / RESULTS_MD, lambda p: p.write_text(result["table"], encoding="utf-8"))
    return result


def _prompts(cfg: BlockSweepConfig, pipe: Any, out: Path) -> _Prompts:
    n, m = cfg.train_prompts, cfg.eval_prompts
    concept_all = concept_prompts(cfg.concept, n + m)
    neutral_all = neutral_prompts()[: n + m]
    held_concept, held_neutral = concept_all[n:], neutral_all[n:]
    return _Prompts(
        capture=_write_lines(out / "capture_prompts.txt", concept_all[:n] + neutral_all[:n]),
        concept=_write_lines(out / "concept_prompts.txt", concept_all[:n]),
        neutral=_write_lines(out / "neutral_prompts.txt", neutral_all[:n]),
        held_concept=held_concept,
        held_neutral=held_neutral,
        plain_concept=_images(pipe, held_concept, cfg.sampling),
        plain_neutral=_images(pipe, held_neutral, cfg.sampling),
    )


def _train_block_sae(cfg: BlockSweepConfig, block: str, prompts: Path, work: Path) -> Sae:
    """Capture ``block`` on the sweep's prompts and train an SAE on it."""
    run_cache(
        CacheConfig(
            model=cfg.resolved_model,
            hookpoint=block,
            prompts=str(prompts),
            out=str(work / "acts"),
            sampling=cfg.sampling,
            guidance_half=cfg.guidance_half,
            dtype="float32",
            max_shard_mb=cfg.max_shard_mb,
        )
    )
    trainer = Trainer(
        TrainConfig.from_dict(
            {
                "activations": str(work / "acts"),
                "out": str(work / "sae"),
                "k": cfg.k,
                "expansion_factor": cfg.expansion_factor,
                "epochs": cfg.epochs,
                "batch_size": cfg.sae_batch_size,
                "device": cfg.sampling.device,
            }
        )
    )
    trainer.train()
    return Sae.from_pretrained(work / "sae", hookpoint=block)


def _erase_with(
    cfg: BlockSweepConfig, pipe: Any, sae: Sae, block: str, prompts: _Prompts, work: Path
) -> dict[str, Any]:
    """The concept's features at ``block``, and what erasing them does to the held-out
    concept and neutral images."""
    features = build_concept(
        ConceptBuildConfig(
            concept=cfg.concept,
            model=cfg.resolved_model,
            # An SAE folder just trained: not a bundle, nothing to look up.
            sae=ResolvedModel(str(work / "sae")),
            hookpoint=block,
            prompts=str(prompts.concept),
            others=str(prompts.neutral),
            tau=cfg.tau,
            sampling=cfg.sampling,
            guidance_half=cfg.guidance_half,
            cache_dir=str(work / "stats"),
        ),
        pipe=pipe,
        sae=sae,
    )
    with erase(pipe, sae, features, multiplier=cfg.multiplier, guidance_half=cfg.guidance_half):
        erased_concept = _images(pipe, prompts.held_concept, cfg.sampling)
        erased_neutral = _images(pipe, prompts.held_neutral, cfg.sampling)
    effect = float(np.abs(erased_concept - prompts.plain_concept).mean())
    collateral = float(np.abs(erased_neutral - prompts.plain_neutral).mean())
    return {
        "block": block,
        "effect": effect,
        "collateral": collateral,
        "selectivity": effect / collateral if collateral > 0 else float("inf"),
        "heldout_fvu": _held_out_fvu(work / "sae" / block),
    }


def _table(cfg: BlockSweepConfig, rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Block sweep on {cfg.model}: erase {cfg.concept!r} (gamma {cfg.multiplier}, tau "
        f"{cfg.tau}), {cfg.sampling.steps} steps, guidance {cfg.sampling.guidance}; "
        f"{cfg.eval_prompts} held-out prompts each side; pixel change 0-255",
        "",
        "| block | effect | collateral | selectivity | SAE held-out FVU | seconds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fvu = "" if r["heldout_fvu"] is None else f"{r['heldout_fvu']:.3f}"
        lines.append(
            f"| {r['block']} | {r['effect']:.3f} | {r['collateral']:.3f} | "
            f"{r['selectivity']:.2f} | {fvu} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"
