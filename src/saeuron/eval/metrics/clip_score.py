"""``clip_score``: text-image alignment, 100 x cosine of CLIP embeddings (floored at 0).

As torchmetrics and the literature define it (Hessel et al., 2021, without the 2.5 weight).
Prompts from a CSV or text file, or the bundled neutral prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saeuron.eval.clip import DEFAULT_CLIP, ClipMetric, load_clip
from saeuron.eval.metrics.base import Item, Metric, mean_of, register
from saeuron.eval.metrics.parts import ClipModel, PromptsPath
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_parts import MAX_LIMIT, Device, Limit
from saeuron.utils.prompts import neutral_prompts, read_prompt_rows


@dataclass
class ClipScoreConfig(Config):
    prompt_source: PromptsPath = field(
        PromptsPath, flatten=True, help="the prompts to sample",
        describe={
            "prompts_path": "CSV (prompt column) or text file; default: the bundled neutral "
            "prompts"
        },
    )  # fmt: skip
    count: Limit = field(
        Limit(limit=300), flatten=True, help="how many prompts",
        describe={"limit": "at most this many prompts"},
        limits={"limit": {"le": MAX_LIMIT}},
    )  # fmt: skip
    clip: ClipModel = field(
        ClipModel(clip_model=DEFAULT_CLIP), flatten=True, help="the scoring CLIP",
        describe={"clip_model": "CLIP id or local folder"},
    )  # fmt: skip
    runtime: Device = field(
        Device, flatten=True, help="where CLIP runs",
        describe={"device": "device of the CLIP model"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        refuse_null(self, "limit", "clip_model")
        if not self.clip_model.strip():
            raise ConfigError("clip_model", "must be a model id or folder")


@register
class ClipScore(ClipMetric, Metric):
    name = "clip_score"
    Config = ClipScoreConfig
    higher_is_better = {"clip_score": True}
    help = "100 x cosine(CLIP image, CLIP prompt)"

    config: ClipScoreConfig

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        if cfg.prompts_path is None:
            return [Item(p, seed + i) for i, p in enumerate(neutral_prompts()[: cfg.limit])]
        rows = read_prompt_rows(cfg.prompts_path, "prompts_path", cfg.limit)
        return [
            Item(r.prompt, r.seed if r.seed is not None else seed + i) for i, r in enumerate(rows)
        ]

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        clip = load_clip(self.config.clip_model, self.config.device)
        cos = (clip.embed_images(images) * clip.embed_texts([i.prompt for i in items])).sum(-1)
        return [{"clip_score": max(100.0 * float(c), 0.0)} for c in cos.tolist()]

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {"clip_score": mean_of(rows, "clip_score")}
