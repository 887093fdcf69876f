"""``preservation``: how much an erasure changes images it should leave alone.

Each prompt without the concept is sampled twice with the same seed, erased and unerased,
and the pair compared: SSIM and PSNR (no weights needed) and, given a CLIP model, the cosine
of the two CLIP image embeddings. An erasure that touches only its
concept scores SSIM 1, PSNR at its cap (100 dB), CLIP similarity 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saeuron.eval.clip import clip_requirement, load_clip
from saeuron.eval.metrics.base import Item, Metric, Requirement, mean_of, register
from saeuron.eval.metrics.parts import ClipModel, PromptsPath
from saeuron.eval.similarity import psnr, ssim
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_parts import MAX_LIMIT, Concept, Device, Limit
from saeuron.utils.prompts import neutral_prompts, read_prompt_rows


@dataclass
class PreservationConfig(Config):
    erased: Concept = field(
        Concept, flatten=True, help="the concept the prompts leave out",
        describe={"concept": "prompts naming it are left out; default: technique's"},
    )  # fmt: skip
    prompt_source: PromptsPath = field(
        PromptsPath, flatten=True, help="the prompts to sample",
        describe={
            "prompts_path": "CSV (prompt column) or text file; default: the bundled neutral "
            "prompts"
        },
    )  # fmt: skip
    count: Limit = field(
        Limit(limit=50), flatten=True, help="how many prompts",
        describe={"limit": "at most this many prompts"},
        limits={"limit": {"le": MAX_LIMIT}},
    )  # fmt: skip
    clip: ClipModel = field(
        ClipModel, flatten=True, help="the CLIP comparing the images",
        describe={
            "clip_model": "CLIP id or folder for image similarity; default: SSIM and PSNR only"
        },
    )  # fmt: skip
    runtime: Device = field(
        Device, flatten=True, help="where CLIP runs",
        describe={"device": "device of the CLIP model"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        refuse_null(self, "limit")
        if self.clip_model is not None and not self.clip_model.strip():
            raise ConfigError("clip_model", "must be a model id or folder when given")


@register
class Preservation(Metric):
    name = "preservation"
    Config = PreservationConfig
    higher_is_better = {"ssim": True, "psnr": True, "clip_similarity": True}
    needs_unerased = True
    concept_field = "concept"
    help = "erased vs unerased image of prompts without the concept: SSIM, PSNR, CLIP"

    config: PreservationConfig

    def requirements(self) -> list[Requirement]:
        return [clip_requirement(self.config.clip_model)] if self.config.clip_model else []

    def prepare(self) -> None:
        if self.config.clip_model:
            load_clip(self.config.clip_model, self.config.device)

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        if cfg.prompts_path is not None:
            rows = read_prompt_rows(cfg.prompts_path, "prompts_path")
            prompts = [(r.prompt, r.seed) for r in rows]
        else:
            prompts = [(p, None) for p in neutral_prompts()]
        concept = (cfg.concept or "").lower()
        kept = [(p, s) for p, s in prompts if not concept or concept not in p.lower()]
        return [
            Item(p, s if s is not None else seed + i) for i, (p, s) in enumerate(kept[: cfg.limit])
        ]

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        if unerased is None:
            raise ValueError("preservation compares with the unerased images")
        rows = [{"ssim": ssim(a, b), "psnr": psnr(a, b)} for a, b in zip(images, unerased)]
        if self.config.clip_model:
            clip = load_clip(self.config.clip_model, self.config.device)
            cos = (clip.embed_images(images) * clip.embed_images(unerased)).sum(-1)
            for row, value in zip(rows, cos.tolist()):
                row["clip_similarity"] = float(value)
        return rows

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        out = {"ssim": mean_of(rows, "ssim"), "psnr": mean_of(rows, "psnr")}
        if self.config.clip_model:
            out["clip_similarity"] = mean_of(rows, "clip_similarity")
        return out
