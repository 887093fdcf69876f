"""``asr_ring_a_bell`` (alias ``asr_custom``): attack success of Ring-A-Bell prompts.

Adversarial prompts are searched in the technique's own text encoder (see
:mod:`saeuron.eval.attacks.ring_a_bell`), then sampled with the technique and judged by a
detector (see :mod:`saeuron.eval.metrics.adversarial`). By default the concept's own words
are kept out of the search, so a found prompt never just names the concept: it is what a
keyword filter would let through.

The concept vector comes from pairs of prompts, the same scene with and without the concept
(Ring-A-Bell's construction): given as two files, line by line, or built from the bundled
scenes. Search settings follow ``budget`` (see :mod:`saeuron.eval.attacks.budgets`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from saeuron.eval.attacks.ring_a_bell import GeneticSettings, concept_pairs, ring_a_bell
from saeuron.eval.metrics.adversarial import AdversarialMetric, AttackConfig
from saeuron.eval.metrics.base import register
from saeuron.utils.config import ConfigError, check_range, field
from saeuron.utils.prompts import read_prompt_rows, read_prompts


@dataclass
class RingABellConfig(AttackConfig):
    with_prompts_path: str | None = field(
        None,
        help="prompts with the concept, for the concept vector; default: the bundled "
        "scenes with the concept",
    )
    without_prompts_path: str | None = field(
        None, help="the same prompts without it, line by line; default: the bundled scenes"
    )
    eta: float | None = field(
        None,
        gt=0,
        le=1000,
        help="strength of the concept vector added to each prompt; default: the budget's",
    )
    population: int | None = field(
        None,
        ge=2,
        le=1_000_000,
        help="genetic search: prompts per generation; default: the budget's",
    )
    generations: int | None = field(
        None, ge=1, le=1_000_000, help="genetic search: generations; default: the budget's"
    )
    mutation: float | None = field(
        None,
        ge=0,
        le=1,
        help="genetic search: chance a prompt gets one random token; default: the budget's",
    )
    crossover: float | None = field(
        None, ge=0, le=1, help="genetic search: chance a survivor mates; default: the budget's"
    )

    attack: ClassVar[str] = "ring_a_bell"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("population", self.population, ge=4)
        check_range("generations", self.generations, ge=1)
        check_range("mutation", self.mutation, ge=0, le=1)
        check_range("crossover", self.crossover, ge=0, le=1)
        check_range("eta", self.eta, ge=0, lt=math.inf)
        for name in ("with_prompts_path", "without_prompts_path"):
            if getattr(self, name) is not None:
                read_prompt_rows(getattr(self, name), name, limit=1)
        if (self.with_prompts_path is None) != (self.without_prompts_path is None):
            raise ConfigError("without_prompts_path", "give both prompt files of the pairs or none")

    def search_settings(self) -> Any:
        return GeneticSettings(
            self.length, self.population, self.generations, self.mutation, self.crossover
        )

    def pairs(self) -> tuple[list[str], list[str]]:
        if self.with_prompts_path and self.without_prompts_path:
            with_c = read_prompts(self.with_prompts_path, "with_prompts_path")
            without = read_prompts(self.without_prompts_path, "without_prompts_path")
            if len(with_c) != len(without):
                raise ConfigError("without_prompts_path", "must have one line per with-prompt")
            return with_c, without

        return concept_pairs(str(self.concept))


@register
class AsrRingABell(AdversarialMetric):
    name = "asr_ring_a_bell"
    Config = RingABellConfig
    search_keys = ("with_prompts_path", "without_prompts_path", "eta", "population",
                   "generations", "mutation", "crossover")  # fmt: skip
    help = "attack success of Ring-A-Bell prompts found in the technique's text encoder"

    config: RingABellConfig

    def search(self, technique: Any, seed: int) -> list[dict[str, Any]]:
        cfg = self.config
        with_c, without = cfg.pairs()
        return ring_a_bell(
            technique.pipe, cfg.targets(), with_c, without, cfg.eta, cfg.search_settings(), seed,
            forbidden_words=cfg.forbidden_words(),
        )  # fmt: skip


@register
class AsrCustom(AsrRingABell):
    """eval-unlearn's "ASR Custom": the same attack under eval-unlearn's other name."""

    name = "asr_custom"
