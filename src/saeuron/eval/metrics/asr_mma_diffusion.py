"""``asr_mma_diffusion``: attack success of MMA-Diffusion's text attack.

Prompts whose text embedding matches a concept prompt's, with the concept's words banned
(see :mod:`saeuron.eval.attacks.mma`), searched in the technique's own text encoder; images
and verdicts as :mod:`saeuron.eval.metrics.adversarial` says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saeuron.eval.attacks.mma import GcgSettings, mma_attack
from saeuron.eval.metrics.adversarial import AdversarialMetric, AttackConfig
from saeuron.eval.metrics.base import register
from saeuron.utils.config import check_range, field


@dataclass
class MmaConfig(AttackConfig):
    length: int = field(20, help="tokens of an adversarial prompt")
    iterations: int = field(100, help="GCG iterations per prompt")
    top_k: int = field(256, help="tokens kept per position from the gradient")
    candidates: int = field(64, help="single-token swaps tried per iteration")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("iterations", "top_k", "candidates"):
            check_range(name, getattr(self, name), ge=1)


@register
class AsrMmaDiffusion(AdversarialMetric):
    name = "asr_mma_diffusion"
    Config = MmaConfig
    search_keys = ("iterations", "top_k", "candidates")
    help = "attack success of MMA-Diffusion's text attack (concept words banned)"

    config: MmaConfig

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        cfg = self.config
        settings = GcgSettings(cfg.length, cfg.iterations, cfg.top_k, cfg.candidates)
        return mma_attack(technique.pipe, cfg.targets(), settings, seed, cfg.forbidden_words())
