"""The settings of an erasure: gamma per concept, which rows, the error term, the edit rule
and the window of the schedule (:class:`EraseConfig`), with the allowed values."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from saeuron.models.sites import (
    ACTIVATION_SITES,
    GUIDANCE_HALF_ALIASES,
    GUIDANCE_HALVES,
    GUIDANCE_SITE,
)
from saeuron.utils.config import Config, ConfigError, check_range, field

logger = logging.getLogger(__name__)

ERROR_TERMS = ("exact", "paper")
EDIT_PATHS = ("auto", "sparse", "dense")
RULES = ("scale", "ablate", "anchor", "project")
"""How a selected latent ``a`` above its threshold is edited:

- ``scale`` (SAeUron, the published rule): ``a <- gamma * mu_c * a``;
- ``ablate``: ``a <- r + gamma * (a - r)``, ``r`` the latent's mean on the other concepts
  (``ConceptFeatures.retain``): gamma 0 brings it to what the rest of the world shows,
  negative gamma overshoots past it;
- ``anchor``: ``ablate`` on the concept's latents, and on the tokens it edits each latent
  ``g`` of an anchor concept rises to ``(1 - min(gamma, 0)) * s * mu_anchor[g]`` (never
  lowered), where ``s = sum_f a_f mu_c[f] / sum_f mu_c[f]^2`` is how strongly the token
  shows the concept (the anchor is pulled in as hard as the concept is pushed out):
  the concept is replaced by the anchor at the same strength instead of being wiped;
- ``project``: on the tokens ``ablate`` edits, the component of the SAE input along the span
  of the concept's decoder directions (orthonormalised, ``b_dec`` as origin) is scaled by
  gamma, error term included: gamma 0 removes all of it, not only what the latents encode.

Every rule has both edit paths (``edit_path``): the sparse one, and the dense one that
``torch.compile`` traces into one graph for every step.
"""


MAX_MULTIPLIER = 1000.0
"""Largest |gamma| accepted: the published values reach 100; beyond 1000 an edit only
overflows (an fp16 UNet turns it into a black image)."""


@dataclass
class EraseConfig(Config):
    """How :func:`erase` edits: the strength per concept and which rows and terms it uses."""

    multiplier: float = field(
        -1.0,
        ge=-MAX_MULTIPLIER,
        le=MAX_MULTIPLIER,
        help="gamma: scale of the edited latents; negative erases, positive amplifies",
    )
    multipliers: dict[str, float] = field(
        {}, help="gamma per concept name, overriding multiplier for those concepts"
    )
    guidance_half: str = field(
        "cond",
        choices=GUIDANCE_HALVES,
        aliases=GUIDANCE_HALF_ALIASES,
        help="'cond': edit the conditional half of the CFG batch; 'both': every row (the "
        "published code). Without CFG the whole batch is conditional either way",
    )
    error_term: str = field(
        "exact",
        choices=ERROR_TERMS,
        help="'exact': x + (a' - a) W_dec; 'paper': the published x_hat' + (x_hat - x)",
    )
    edit_path: str = field(
        "auto",
        choices=EDIT_PATHS,
        help="'sparse': encode only candidate tokens (fast on a CPU, syncs with a GPU); "
        "'dense': one masked edit of every token, no host sync, compile-friendly; 'auto': "
        "dense on GPUs and under torch.compile, sparse on the CPU. Both give the same edit",
    )
    activation_site: str | None = field(
        None,
        choices=ACTIVATION_SITES,
        help="'output', 'update' (output - input) or 'guidance' (conditional minus "
        "unconditional row under CFG); default: what the SAE was trained on",
    )
    hookpoint: str | None = field(
        None, help="module to edit; default: the SAE's, else the concepts' hookpoint"
    )
    rule: str = field(
        "scale",
        choices=RULES,
        help="'scale': the published a <- gamma*mu*a; 'ablate': a <- r + gamma*(a - r) with r "
        "the latent's mean on other concepts; 'anchor': ablate and write in the features' "
        "anchor concept at the token's strength; 'project': scale the input's component "
        "along the concept's decoder directions by gamma",
    )
    window: list[float] | None = field(
        None,
        help="edit only at schedule positions start..end (0 = first step, 1 = last), e.g. "
        "0,0.5; default: every step",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.window is not None:
            window = [float(v) for v in self.window]
            if (
                len(window) != 2
                or not all(math.isfinite(v) for v in window)
                or not (0.0 <= window[0] <= window[1] <= 1.0)
            ):
                raise ConfigError(
                    "window", f"got {self.window!r}; need two numbers 0 <= start <= end <= 1"
                )
            self.window = window

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
