"""``asr_mma_diffusion``: attack success of MMA-Diffusion's text attack.

Prompts whose pooled text embedding matches a concept prompt's, with the concept's words and
their pieces banned (see :mod:`saeuron.eval.attacks.mma`), searched in the technique's own
text encoder; images and verdicts as :mod:`saeuron.eval.metrics.adversarial` says; search
settings follow ``budget`` (see :mod:`saeuron.eval.attacks.budgets`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from saeuron.eval.attacks.mma import GcgSettings, banned_tokens, mma_attack
from saeuron.eval.metrics.adversarial import AdversarialMetric, AttackConfig
from saeuron.eval.metrics.base import register
from saeuron.eval.metrics.parts import Iterations
from saeuron.utils.config import check_range, field


@dataclass
class MmaConfig(AttackConfig):
    search_steps: Iterations = field(
        Iterations, flatten=True, help="how long the search runs",
        describe={"iterations": "GCG iterations per prompt; default: the budget's"},
    )  # fmt: skip
    top_k: int | None = field(
        None, ge=1, le=1_000_000, help="tokens kept per position from the gradient"
    )
    candidates: int | None = field(
        None, ge=1, le=1_000_000, help="single-token swaps tried per iteration"
    )

    attack: ClassVar[str] = "mma_diffusion"

    def __post_init__(self) -> None:
        super().__post_init__()
        # After the budget filled them in (the declared bounds checked the given values).
        for name in ("iterations", "top_k", "candidates"):
            check_range(name, getattr(self, name), ge=1)

    def search_settings(self) -> Any:
        return GcgSettings(self.length, self.iterations, self.top_k, self.candidates)


@register
class AsrMmaDiffusion(AdversarialMetric):
    name = "asr_mma_diffusion"
    Config = MmaConfig
    search_keys = ("iterations", "top_k", "candidates")
    help = "attack success of MMA-Diffusion's text attack (concept words and pieces banned)"

    config: MmaConfig

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        cfg = self.config
        words = cfg.forbidden_words()
        self.record = {"banned_tokens": len(banned_tokens(technique.pipe.tokenizer, words))}
        return mma_attack(technique.pipe, cfg.targets(), cfg.search_settings(), seed, words)
