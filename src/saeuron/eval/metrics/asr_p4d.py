"""``asr_p4d``: attack success of P4D prompts, optimised through the erasing technique.

The search (see :mod:`saeuron.eval.attacks.p4d`) differentiates through the technique's
UNet with its erasure active, so each prompt is an attack on the technique under test, not
on the plain model. Images and verdicts as :mod:`saeuron.eval.metrics.adversarial` says;
search settings follow ``budget`` (see :mod:`saeuron.eval.attacks.budgets`).

P4D keeps the prompt whose image is most similar to the unerased target image in CLIP's
image space (``selection_clip``). Where that CLIP cannot be loaded (no network, not in the
cache) the search says so in the log and in ``attack.json`` and compares pixels instead.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from saeuron.eval.attacks.p4d import ClipSimilarity, P4dSettings, PixelSimilarity, p4d
from saeuron.eval.clip import available_offline, load_clip
from saeuron.eval.detectors import judge
from saeuron.eval.metrics.adversarial import AdversarialMetric, AttackConfig
from saeuron.eval.metrics.base import MetricError, Requirement, register
from saeuron.eval.metrics.parts import Iterations, Optimiser
from saeuron.utils.config import check_range, field

logger = logging.getLogger(__name__)

P4D_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
"""The CLIP P4D selects its prompts with (open_clip's ViT-H-14, laion2b_s32b_b79k)."""


@dataclass
class P4dConfig(AttackConfig):
    search_steps: Iterations = field(
        Iterations, flatten=True, help="how long the search runs",
        describe={"iterations": "optimisation steps per prompt; default: the budget's"},
    )  # fmt: skip
    optimiser: Optimiser = field(
        Optimiser, flatten=True, help="AdamW of the soft prompt",
        describe={"lr": "AdamW learning rate of the soft prompt",
                  "weight_decay": "AdamW weight decay"},
    )  # fmt: skip
    eval_every: int | None = field(
        None,
        ge=1,
        le=1_000_000,
        help="steps between two draws of the current prompt (the most similar is kept)",
    )
    target_samples: int | None = field(
        None,
        ge=1,
        le=1000,
        help="unerased images of each prompt; the most flagged one is the target",
    )
    selection_clip: str = field(
        P4D_CLIP, help="CLIP (hub id or local folder) comparing drawn and target images"
    )

    attack: ClassVar[str] = "p4d"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("iterations", self.iterations, ge=1)
        check_range("lr", self.lr, gt=0, lt=math.inf)
        check_range("weight_decay", self.weight_decay, ge=0, lt=math.inf)
        check_range("eval_every", self.eval_every, ge=1)
        check_range("target_samples", self.target_samples, ge=1)

    def search_settings(self) -> Any:
        return P4dSettings(self.length, self.iterations, self.lr, self.weight_decay,
                           self.eval_every, self.target_samples)  # fmt: skip


@register
class AsrP4d(AdversarialMetric):
    name = "asr_p4d"
    Config = P4dConfig
    search_keys = ("iterations", "lr", "weight_decay", "eval_every", "target_samples",
                   "selection_clip")  # fmt: skip
    help = "attack success of P4D prompts optimised through the erasing technique (white box)"

    config: P4dConfig

    def requirements(self) -> list[Requirement]:
        model = self.config.selection_clip
        ok = available_offline(model)
        detail = "" if ok else "not on this machine: downloaded, else pixel similarity is used"
        return [
            *super().requirements(),
            Requirement(f"P4D's CLIP {model}", ok, detail, kind="download", needed=False),
        ]

    def similarity(self) -> Any:
        """CLIP image similarity, or pixel similarity (logged) when the CLIP cannot load."""
        model = self.config.selection_clip
        try:
            return ClipSimilarity(load_clip(model, self.config.device), model)
        except MetricError as err:
            logger.warning(
                "asr_p4d: P4D picks its prompts by CLIP image similarity, but the CLIP %s "
                "cannot be loaded (%s); picking by pixel cosine similarity instead",
                model, " ".join(str(err).split())[:200],
            )  # fmt: skip
            return PixelSimilarity()

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        cfg = self.config
        similarity = self.similarity()
        self.record = {"selection": similarity.name}

        def rank(images: list[Any]) -> list[float]:
            return [v.score for v in judge(self.detector, images)]

        return p4d(technique, cfg.targets(), cfg.search_settings(), seed, cfg.forbidden_words(),
                   rank=rank, similarity=similarity)  # fmt: skip
