"""The settings of an erasure: gamma per concept, which rows, the error term, the edit rule
and the window of the schedule (:class:`EraseConfig`), with the allowed values."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from saeuron.erasure.edit_parts import (
    ERROR_TERMS,
    MAX_MULTIPLIER,
    RULES,
    ActivationSite,
    ErrorTerm,
    GuidanceHalf,
    Hookpoint,
    Rule,
    Strength,
    Window,
)
from saeuron.models.sites import GUIDANCE_SITE
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null

__all__ = ["EDIT_PATHS", "ERROR_TERMS", "MAX_MULTIPLIER", "RULES", "EraseConfig"]

logger = logging.getLogger(__name__)

EDIT_PATHS = ("auto", "sparse", "dense")


def _read_through(part: str, key: str) -> Any:
    """``cfg.key`` read from the part ``part`` of an :class:`EraseConfig`."""
    return property(lambda self: getattr(self.__dict__[part], key))


@dataclass
class EraseConfig(Config):
    """How :func:`erase` edits: the strength per concept and which rows and terms it uses."""

    strength: Strength = field(Strength(multiplier=-1.0), flatten=True, help="gamma")
    multipliers: dict[str, float] = field(
        {}, help="gamma per concept name, overriding multiplier for those concepts"
    )
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows edited",
        describe={
            "guidance_half": "'cond': edit the conditional half of the CFG batch; 'both': every "
            "row (the published code). Without CFG the whole batch is conditional either way"
        },
    )
    errors: ErrorTerm = field(ErrorTerm, flatten=True, help="the error term")
    edit_path: str = field(
        "auto",
        choices=EDIT_PATHS,
        help="'sparse': encode only candidate tokens (fast on a CPU, syncs with a GPU); "
        "'dense': one masked edit of every token, no host sync, compile-friendly; 'auto': "
        "dense on GPUs and under torch.compile, sparse on the CPU. Both give the same edit",
    )
    site: ActivationSite = field(
        ActivationSite,
        flatten=True,
        help="what the SAE reads",
        describe={
            "activation_site": "'output', 'update' (output - input) or 'guidance' (conditional "
            "minus unconditional row under CFG); default: what the SAE was trained on"
        },
    )
    block: Hookpoint = field(
        Hookpoint,
        flatten=True,
        help="where it edits",
        describe={"hookpoint": "module to edit; default: the SAE's, else the concepts' hookpoint"},
    )
    edit_rule: Rule = field(
        Rule,
        flatten=True,
        help="the edit rule",
        describe={
            "rule": "'scale': the published a <- gamma*mu*a; 'ablate': a <- r + gamma*(a - r) "
            "with r the latent's mean on other concepts; 'anchor': ablate and write in the "
            "features' anchor concept at the token's strength; 'project': scale the input's "
            "component along the concept's decoder directions by gamma"
        },
    )
    schedule: Window = field(
        Window,
        flatten=True,
        help="the steps edited",
        describe={
            "window": "edit only at schedule positions start..end (0 = first step, 1 = last), "
            "e.g. 0,0.5; default: every step"
        },
    )

    # The hook reads these inside forward passes that torch.compile traces, where the generic
    # read of a nested key (Config.__getattr__, which looks the key's part up) cannot be
    # traced: plain properties of the part that holds each. Writes still go to the part.
    multiplier = _read_through("strength", "multiplier")
    guidance_half = _read_through("rows", "guidance_half")
    error_term = _read_through("errors", "error_term")
    activation_site = _read_through("site", "activation_site")
    hookpoint = _read_through("block", "hookpoint")
    rule = _read_through("edit_rule", "rule")
    window = _read_through("schedule", "window")

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "multiplier")
        for name, value in self.multipliers.items():
            check_range(f"multipliers.{name}", value, ge=-MAX_MULTIPLIER, le=MAX_MULTIPLIER)
        if self.activation_site == GUIDANCE_SITE and self.guidance_half != "cond":
            raise ConfigError(
                "guidance_half", "activation_site 'guidance' edits the conditional rows; use 'cond'"
            )
        if self.rule != "scale" and self.error_term != "exact":
            raise ConfigError(
                "error_term",
                f"rule {self.rule!r} needs error_term='exact' (the published error term "
                "belongs to the published rule)",
            )

    def edits_step(self, step: int, num_steps: int) -> bool:
        """Whether the window lets the hook edit step ``step`` of ``num_steps``."""
        if self.window is None:
            return True
        position = step / (num_steps - 1) if num_steps > 1 else 0.0
        return self.window[0] - 1e-9 <= position <= self.window[1] + 1e-9

    def edits_timestep(self, timestep: float, train_timesteps: int) -> bool:
        """The window for a denoiser call outside a sampling loop: the timestep's position
        in the training range, from the noisiest (0) to the cleanest (1)."""
        if self.window is None or not math.isfinite(timestep):
            return True
        span = max(train_timesteps - 1, 1)
        position = 1.0 - min(max(timestep, 0.0), span) / span
        return self.window[0] - 1e-9 <= position <= self.window[1] + 1e-9

    def multiplier_of(self, concept: str) -> float:
        return float(self.multipliers.get(concept, self.multiplier))
