"""The settings of an erasure that several configs share, each key declared once.

An erasure's config (:class:`~saeuron.erasure.erase_config.EraseConfig`), the technique's
(:class:`~saeuron.erasure.technique_config.SAeUronConfig`), a concept build, a capture and
the evaluated techniques nest the parts they need with ``flatten=True``, as they nest the
parts every command shares (:mod:`saeuron.utils.config_parts`): the keys stay at the
config's level in JSON, keyword arguments and flags; each config sets its default with the
instance it nests, its words with ``describe`` and tighter bounds with ``limits``.

A part declares a key that may be left unset (``None``) where some config leaves it so; a
config that gives it a default cannot do without a value and refuses ``None`` with
:func:`~saeuron.utils.config.refuse_null`. What a key accepts on its own (its choices, its
bounds, a window's shape) is checked here; what it must agree with (a rule with its error
term, the guidance site with the rows) is checked by the config holding both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from saeuron.models.sites import ACTIVATION_SITES, GUIDANCE_HALF_ALIASES, GUIDANCE_HALVES
from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.config_parts import KeepsObjects

ERROR_TERMS = ("exact", "paper")
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
class EraseConcept(Config):
    erase_concept: str | None = field(None, help="the concept to erase")


@dataclass
class Strength(Config):
    multiplier: float | None = field(
        None,
        ge=-MAX_MULTIPLIER,
        le=MAX_MULTIPLIER,
        help="gamma: scale of the edited latents; negative erases, positive amplifies",
    )


@dataclass
class SaeName(KeepsObjects):
    """The ``sae`` key. From Python it may also be a resolved SAE (a config that looked it up
    hands it on), kept as given for the config to take, as its own field would be."""

    sae: str | None = field(None, help="SAE folder, hub repo id or bundled name")


@dataclass
class Hookpoint(Config):
    hookpoint: str | None = field(None, help="module the SAE reads")


@dataclass
class GuidanceHalf(Config):
    guidance_half: str = field(
        "cond",
        choices=GUIDANCE_HALVES,
        aliases=GUIDANCE_HALF_ALIASES,
        help="'cond': the conditional half of the CFG batch; 'both': every row",
    )


@dataclass
class ErrorTerm(Config):
    error_term: str = field(
        "exact",
        choices=ERROR_TERMS,
        help="'exact': x + (a' - a) W_dec; 'paper': the published x_hat' + (x_hat - x)",
    )


@dataclass
class ActivationSite(Config):
    activation_site: str | None = field(
        None,
        choices=ACTIVATION_SITES,
        help="'output', 'update' (output - input) or 'guidance' (conditional minus "
        "unconditional row under CFG)",
    )


@dataclass
class Rule(Config):
    rule: str = field("scale", choices=RULES, help="how a concept's latents are edited")


@dataclass
class Window(Config):
    window: list[float] | None = field(
        None,
        help="edit only at schedule positions start..end (0 = first step, 1 = last); "
        "default: every step",
    )

    def __post_init__(self) -> None:
        if self.window is None:
            return
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


@dataclass
class PromptFile(Config):
    """A file of prompts; what it must hold (which suffixes, at least one prompt) the config
    reading it checks."""

    prompts: str | None = field(None, help="file of prompts, one a line")


@dataclass
class Percentile(Config):
    percentile: float | None = field(
        None, gt=0, lt=100, help="keep latents scoring strictly above this percentile"
    )


@dataclass
class Tau(Config):
    tau: int | None = field(None, ge=1, le=100_000, help="keep the top tau latents per step")


@dataclass
class RecipeRef(Config):
    recipe: str | None = field(
        None, help="an erasure recipe: a file, a folder with recipe.json, or a hub id"
    )


@dataclass
class StatsRef(Config):
    stats: str | None = field(None, help="concept statistics: a file or a folder of them")
