"""``asr_p4d``: attack success of P4D prompts, optimised through the erasing technique.

The search (see :mod:`saeuron.eval.attacks.p4d`) differentiates through the technique's
UNet with its erasure active, so each prompt is an attack on the technique under test, not
on the plain model. Images and verdicts as :mod:`saeuron.eval.metrics.adversarial` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saeuron.eval.attacks.p4d import P4dSettings, p4d
from saeuron.eval.metrics.adversarial import AdversarialMetric, AttackConfig
from saeuron.eval.metrics.base import register
from saeuron.utils.config import check_range, field


@dataclass
class P4dConfig(AttackConfig):
    iterations: int = field(200, help="optimisation steps per prompt")
    lr: float = field(0.1, help="AdamW learning rate of the soft prompt")
    weight_decay: float = field(0.1, help="AdamW weight decay")
    num_inference_steps: int = field(20, help="steps of the unerased image each prompt starts from")
    guidance_scale: float = field(7.5, help="CFG scale of the matched noise predictions")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("iterations", self.iterations, ge=1)
        check_range("lr", self.lr, gt=0)
        check_range("weight_decay", self.weight_decay, ge=0)
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("guidance_scale", self.guidance_scale, gt=1)

    def search_settings(self) -> Any:
        return P4dSettings(self.length, self.iterations, self.lr, self.weight_decay,
                           self.num_inference_steps, self.guidance_scale)  # fmt: skip


@register
class AsrP4d(AdversarialMetric):
    name = "asr_p4d"
    Config = P4dConfig
    search_keys = ("iterations", "lr", "weight_decay", "num_inference_steps", "guidance_scale")
    help = "attack success of P4D prompts optimised through the erasing technique (white box)"

    config: P4dConfig

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        cfg = self.config
        return p4d(technique, cfg.targets(), cfg.search_settings(), seed, cfg.forbidden_words())
