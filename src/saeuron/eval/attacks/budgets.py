"""How hard each attack searches: as its paper's public code does, or a quick budget.

``published`` (the default) runs each attack with the settings of its authors' public code,
the settings behind the attack success rates their papers report, so a number measured here
can be set beside theirs. ``quick`` keeps every setting that shapes the search (prompt
length, learning rates, operators) and cuts only how long it runs, so a laptop CPU or a CI
job finishes in minutes; its numbers say how an erasure fares against a weak attacker and
are not comparable with the papers'.

A setting given explicitly in a metric's config wins over its budget's value; the report and
``attack.json`` record the budget and every resolved setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from saeuron.utils.config import ConfigError, check_choice

BUDGETS = ("published", "quick")


@dataclass(frozen=True)
class AttackBudget:
    source: str
    """Whose settings ``published`` are."""
    published: Mapping[str, Any]
    quick: Mapping[str, Any]

    def settings(self, budget: str) -> Mapping[str, Any]:
        check_choice("budget", budget, BUDGETS)
        return self.published if budget == "published" else self.quick


def _frozen(**values: Any) -> Mapping[str, Any]:
    return MappingProxyType(dict(values))


ATTACK_BUDGETS: Mapping[str, AttackBudget] = MappingProxyType(
    {
        # Genetic search over token ids: 200 prompts a generation for 3000 generations, the
        # better half kept, each survivor mating with chance 0.5 (one-point crossover) and
        # every prompt getting one random token with chance 0.25; K = 16 tokens, eta = 3.
        "ring_a_bell": AttackBudget(
            source="Ring-A-Bell (Tsai et al., ICLR 2024), the authors' public code",
            published=_frozen(length=16, eta=3.0, population=200, generations=3000,
                              mutation=0.25, crossover=0.5),  # fmt: skip
            quick=_frozen(length=16, eta=3.0, population=32, generations=40,
                          mutation=0.25, crossover=0.5),  # fmt: skip
        ),
        # P4D-N: 16 free tokens, AdamW (lr 0.1, weight decay 0.1) for 3000 iterations; every
        # 50 iterations the current prompt is drawn by the erased model and the one most
        # similar (CLIP image embedding) to the unerased model's image is kept. The target
        # image is the most flagged of 3 unerased images.
        "p4d": AttackBudget(
            source="P4D (Chin et al., ICML 2024), the authors' public code",
            published=_frozen(length=16, iterations=3000, lr=0.1, weight_decay=0.1,
                              eval_every=50, target_samples=3),  # fmt: skip
            quick=_frozen(length=16, iterations=40, lr=0.1, weight_decay=0.1,
                          eval_every=10, target_samples=1),  # fmt: skip
        ),
        # UnlearnDiffAtk: 5 prefix tokens as a simplex-relaxed one-hot, Adam (lr 0.01,
        # weight decay 0.1); 50 training timesteps visited in turn, 40 steps at each, the
        # detector asked after each timestep's steps (the search stops on success).
        "unlearndiffatk": AttackBudget(
            source="UnlearnDiffAtk (Zhang et al., ECCV 2024), the authors' public code",
            published=_frozen(length=5, timesteps=50, iterations=40, lr=0.01,
                              weight_decay=0.1),  # fmt: skip
            quick=_frozen(length=5, timesteps=5, iterations=8, lr=0.01, weight_decay=0.1),
        ),
        # MMA-Diffusion's text attack: 20 tokens, 1000 GCG steps, 256 tokens kept per
        # position, 512 single-token candidates tried per step; loss 1 - cos of the pooled
        # text embeddings.
        "mma_diffusion": AttackBudget(
            source="MMA-Diffusion (Yang et al., CVPR 2024), the authors' public code",
            published=_frozen(length=20, iterations=1000, top_k=256, candidates=512),
            quick=_frozen(length=20, iterations=20, top_k=256, candidates=64),
        ),
    }
)


def resolve_budget(config: Any, attack: str) -> dict[str, Any]:
    """Fill every budget setting ``config`` leaves unset (None) from its ``budget``; returns
    the resolved settings (explicit values kept)."""
    budget = ATTACK_BUDGETS[attack]
    check_choice("budget", config.budget, BUDGETS)
    resolved = {}
    for name, value in budget.settings(config.budget).items():
        if not hasattr(config, name):
            raise ConfigError(name, f"the {attack} budget sets it, but the config lacks it")
        if getattr(config, name) is None:
            setattr(config, name, value)
        resolved[name] = getattr(config, name)
    return resolved
