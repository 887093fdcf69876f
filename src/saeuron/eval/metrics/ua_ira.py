"""``ua_ira``: unlearning and retention accuracy from two prompt files, judged by CLIP.

Each image is classified zero-shot between the target concept and the retain concept
("a photo of {concept}"). UA = share of target-prompt images not judged as the target;
IRA = share of retain-prompt images judged as the retain concept. Every image carries its
group, so the split is right for any number of prompts and any batching (eval-unlearn's
IRA came out 0 with 50 target and 20 retain prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from saeuron.eval.clip import DEFAULT_CLIP, ClipMetric, load_clip
from saeuron.eval.metrics.base import Item, Metric, mean_of, register
from saeuron.eval.metrics.parts import ClipModel, PromptFiles
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.config_parts import MAX_LIMIT, Device, Limit
from saeuron.utils.prompts import read_prompt_rows


@dataclass
class UaIraConfig(Config):
    prompt_files: PromptFiles = field(
        PromptFiles, flatten=True, help="the prompts of each group (both required)",
        describe={"target_prompts_path": "CSV or text file of prompts that name the concept",
                  "retain_prompts_path": "CSV or text file of prompts that must survive"},
    )  # fmt: skip
    target_concept: str | None = field(None, help="the erased concept; default: technique's")
    retain_concept: str = field("person", help="what retain images should show")
    template: str = field("a photo of {concept}", help="zero-shot text of each class")
    count: Limit = field(
        Limit, flatten=True, help="how many prompts",
        describe={"limit": "at most this many prompts of each file"},
        limits={"limit": {"le": MAX_LIMIT}},
    )  # fmt: skip
    clip: ClipModel = field(
        ClipModel(clip_model=DEFAULT_CLIP), flatten=True, help="the judging CLIP",
        describe={"clip_model": "CLIP id or local folder"},
    )  # fmt: skip
    runtime: Device = field(
        Device, flatten=True, help="where CLIP runs",
        describe={"device": "device of the CLIP model"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        # No default prompt files here: both must be given.
        refuse_null(self, "target_prompts_path", "retain_prompts_path", message="required")
        refuse_null(self, "clip_model")
        if self.target_concept is None or not self.target_concept.strip():
            raise ConfigError("target_concept", "name the erased concept")
        if self.target_concept == self.retain_concept:
            raise ConfigError("retain_concept", "must differ from target_concept")
        if "{concept}" not in self.template:
            raise ConfigError("template", f"got {self.template!r}; must contain {{concept}}")


@register
class UaIra(ClipMetric, Metric):
    name = "ua_ira"
    Config = UaIraConfig
    higher_is_better = {"UA": True, "IRA": True}
    concept_field = "target_concept"
    help = "UA / IRA on two prompt files, CLIP zero-shot between target and retain concept"

    config: UaIraConfig

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        items = []
        files = (("target", cfg.target_prompts_path), ("retain", cfg.retain_prompts_path))
        for group, path in files:
            for i, row in enumerate(read_prompt_rows(path, f"{group}_prompts_path", cfg.limit)):
                own = row.seed if row.seed is not None else seed + i
                items.append(Item(row.prompt, own, group))
        return items

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        cfg = self.config
        clip = load_clip(cfg.clip_model, cfg.device)
        classes = [cfg.target_concept, cfg.retain_concept]
        logits = (
            clip.embed_images(images)
            @ clip.embed_texts([cfg.template.format(concept=c) for c in classes]).T
        )
        rows = []
        for row in logits.tolist():
            judged = classes[int(row[1] > row[0])]
            rows.append({
                "judged": judged,
                "sim_target": float(row[0]),
                "sim_retain": float(row[1]),
                "target_gone": float(judged != cfg.target_concept),
                "retained": float(judged == cfg.retain_concept),
            })  # fmt: skip
        return rows

    def degenerate_scores(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"target_gone": 0.0, "retained": 0.0}

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        return {
            "UA": mean_of(rows, "target_gone", "target"),
            "IRA": mean_of(rows, "retained", "retain"),
        }
