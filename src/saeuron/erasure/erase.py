"""The erasing hook: edit a concept's SAE latents while the stock pipeline samples.

At every step and token, for each selected latent f of concept c (docs/method.md, section 5)::

    if a_f > thr_f:   a_f <- gamma_c * mu_c[f] * a_f

Other edit rules (``rule``, :data:`RULES`) and a window of the schedule (``window``) are
options; ``rule="scale"`` with no window is the published method.

``error_term="exact"`` (default) returns ``x + (a' - a) W_dec``: only the decoder rows of
the selected latents are touched, and a token whose latents are not edited keeps its exact
bits. ``error_term="paper"`` reproduces the published code, ``x_hat' + (x_hat - x)``, a full
decode that is not the identity even when nothing is edited.

Usage::

    with saeuron.erasure.erase(pipe, sae, [features], multiplier=-20.0):
        images = pipe(prompt).images
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from saeuron.erasure.erase_config import (
    EDIT_PATHS,
    ERROR_TERMS,
    MAX_MULTIPLIER,
    RULES,
    EraseConfig,
)
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.hook import _EraseHook
from saeuron.erasure.hook_state import (
    EditCounts,
    StepPlan,
    StepTable,
    check_finite_activations,
    timestep_row,
)
from saeuron.models.compiled import hooks_changed
from saeuron.models.denoising import DenoiseState, DenoiseTracker
from saeuron.models.hookpoints import resolve_module
from saeuron.models.layout import check_hook_width
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.models.tokens import (
    ACTIVATION_SITES,
    GUIDANCE_HALVES,
)
from saeuron.sae import Sae
from saeuron.utils.config import ConfigError, check_range

# Re-exported: the settings, the hook and its handle are reached through this module.
__all__ = [
    "ACTIVATION_SITES",
    "GUIDANCE_HALVES",
    "EDIT_PATHS",
    "ERROR_TERMS",
    "MAX_MULTIPLIER",
    "RULES",
    "EraseConfig",
    "EditCounts",
    "Erasure",
    "StepPlan",
    "StepTable",
    "_EraseHook",
    "attach",
    "check_finite_activations",
    "check_same_sae",
    "erase",
    "timestep_row",
    "warn_if_unedited",
]

logger = logging.getLogger(__name__)


def _as_list(concepts: Any) -> list[ConceptFeatures]:
    if isinstance(concepts, ConceptFeatures):
        return [concepts]
    if isinstance(concepts, Mapping):
        return list(concepts.values())
    return list(concepts)


def check_same_sae(concepts: Sequence[ConceptFeatures], sae: Sae) -> None:
    """Refuse features selected from another SAE; features made before fingerprints were
    recorded are used with a warning, once each."""
    fingerprint: str | None = None
    for concept in concepts:
        recorded = concept.sae_fingerprint
        if recorded is None:
            if not getattr(concept, "_unchecked_warned", False):
                logger.warning(
                    "features of %r do not record the SAE they were selected from (made by an "
                    "older saeuron): they cannot be checked against this SAE",
                    concept.concept,
                )
                concept._unchecked_warned = True  # type: ignore[attr-defined]
            continue
        fingerprint = fingerprint or sae.fingerprint()
        if recorded != fingerprint:
            made_with = concept.meta.get("sae") or "another SAE"
            raise ConfigError(
                "features",
                f"features of {concept.concept!r} were selected from SAE {recorded[:16]} "
                f"({made_with}), but the SAE given is {fingerprint[:16]} "
                f"({sae.meta.get('source', 'in memory')}); rebuild them with this SAE "
                "(saeuron concept build) or erase with the SAE they came from",
            )


def _check_multipliers(names: list[str], cfg: EraseConfig, exact: bool) -> dict[str, float]:
    unknown = [n for n in cfg.multipliers if n not in names]
    missing = [n for n in names if n not in cfg.multipliers] if exact else []
    if unknown or missing:
        raise ConfigError(
            "multiplier" if exact else "multipliers",
            f"per-concept multipliers must name the erased concepts {names}; "
            f"unknown {unknown}" + (f", missing {missing}" if exact else ""),
        )
    return {n: cfg.multiplier_of(n) for n in names}


class Erasure:
    """A concept erasure attached to a pipeline, until :meth:`remove`.

    Made by :func:`attach` (persistent, in the style of diffusers' adapters) or
    :func:`erase` (a ``with`` block). The strength of each concept can change between calls
    (:meth:`set_scale`), the edit can be switched off and on (:meth:`disable`,
    :meth:`enable`); once removed, the pipeline samples exactly as it did before.
    """

    def __init__(
        self,
        pipe: Any,
        sae: Sae,
        concepts: list[ConceptFeatures],
        multipliers: dict[str, float],
        cfg: EraseConfig,
        hookpoint: str,
        module: nn.Module,
    ):
        self.pipe = pipe
        self.sae = sae
        self.config = cfg
        self.handle = EditCounts(hookpoint=hookpoint, concepts=[c.concept for c in concepts])
        site = activation_site(cfg, sae)
        # A prompt encoder runs before the steps, once per prompt: its hook edits every call
        # with the statistics' one row, so it follows no denoising step.
        in_encoder = prompt_encoder_of(hookpoint) is not None
        self._tracker = None if in_encoder else DenoiseTracker(pipe)
        state = self._tracker.state if self._tracker is not None else DenoiseState()
        train_timesteps = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000) or 1000)
        self._hook = _EraseHook(
            sae, concepts, multipliers, cfg, site, state, self.handle, train_timesteps
        )
        block_dtypes = tuple({p.dtype for p in module.parameters()})
        if self._tracker is not None:
            self._tracker.add_listener(
                lambda state, sample: self._hook.prepare(state, sample, block_dtypes)
            )
        # transformers records an encoder's hidden states (SDXL reads the second-to-last)
        # with forward hooks of its own, installed on first use: the edit runs first, so
        # what they record is the edited output.
        self._removable: Any = module.register_forward_hook(
            self._hook, with_kwargs=True, prepend=in_encoder
        )
        hooks_changed(pipe)

    @property
    def hookpoint(self) -> str:
        return self.handle.hookpoint

    @property
    def concepts(self) -> list[str]:
        return list(self.handle.concepts)

    @property
    def calls(self) -> int:
        return self.handle.calls

    @property
    def edited_tokens(self) -> int:
        """Tokens edited so far (on a GPU, reading it waits for the device)."""
        return self._hook.edited_tokens

    @property
    def scales(self) -> dict[str, float]:
        """Each concept's gamma (multiplier)."""
        return dict(self._hook.multipliers)

    @property
    def enabled(self) -> bool:
        return self._hook.enabled

    @property
    def attached(self) -> bool:
        return self._removable is not None

    def set_scale(self, concept: str, multiplier: float) -> None:
        """Change one concept's gamma; the next pipeline call uses it."""
        if concept not in self._hook.multipliers:
            raise ConfigError(
                "concept", f"got {concept!r}; this erasure holds {', '.join(self.concepts)}"
            )
        check_range(
            f"multipliers.{concept}", float(multiplier), ge=-MAX_MULTIPLIER, le=MAX_MULTIPLIER
        )
        self._hook.multipliers[concept] = float(multiplier)
        self._hook.reset_plans()

    def disable(self) -> None:
        """Sample as if no erasure were attached (the hooks stay, doing nothing)."""
        self._hook.enabled = False

    def enable(self) -> None:
        self._hook.enabled = True

    def remove(self) -> None:
        """Take the hooks off the pipeline; calling it again does nothing."""
        if self._removable is not None:
            self._removable.remove()
            if self._tracker is not None:
                self._tracker.remove()
            self._removable = None
            hooks_changed(self.pipe)

    def __enter__(self) -> Erasure:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(
    pipe: Any,
    sae: Sae,
    concepts: ConceptFeatures | Sequence[ConceptFeatures] | Mapping[str, ConceptFeatures],
    config: EraseConfig | None = None,
    **overrides: Any,
) -> Erasure:
    """Erase ``concepts`` in ``pipe`` from now until :meth:`Erasure.remove`.

    ``config`` (an :class:`EraseConfig`) and keyword ``overrides`` of its fields set the
    edit: ``attach(pipe, sae, cat, multiplier=-20.0)``, or with another rule and a window of
    the schedule, ``attach(pipe, sae, cat, multiplier=-5.0, rule="ablate", window=[0, 0.5])``.
    ``multiplier`` may also be a mapping from concept name to gamma naming every concept.
    The SAE is not moved: the hook computes on the activation's device and in its dtype (a
    copy per device and dtype, made once), so CPU offloading and half precision need nothing
    more.
    Statistics from N steps applied to sampling with M steps are mapped by position in the
    schedule.
    """
    exact = isinstance(overrides.get("multiplier"), Mapping)
    if exact:
        overrides["multipliers"] = dict(overrides.pop("multiplier"))
    cfg = (config or EraseConfig()).replace(**overrides) if overrides else (config or EraseConfig())
    concept_list = _as_list(concepts)
    names = [c.concept for c in concept_list]
    if len(set(names)) != len(names):
        raise ConfigError("concepts", f"each concept may appear once; got {names}")
    multipliers = _check_multipliers(names, cfg, exact)
    hookpoint = (
        cfg.hookpoint
        or sae.meta.get("hookpoint")
        or next((c.hookpoint for c in concept_list if c.hookpoint), None)
    )
    if hookpoint is None:
        raise ConfigError(
            "hookpoint", "name the module to edit, e.g. 'unet.up_blocks.1.attentions.1'"
        )
    module = resolve_module(pipe, hookpoint)
    check_hook_width(module, sae.d_in, hookpoint)
    if prompt_encoder_of(hookpoint):
        check_prompt_encoder_edit(hookpoint, cfg, sae, concept_list)
    for concept in concept_list:
        if concept.hookpoint and concept.hookpoint != hookpoint:
            raise ConfigError(
                "concepts",
                f"features of {concept.concept!r} were computed at {concept.hookpoint}, "
                f"not {hookpoint}",
            )
        if concept.latents() and max(concept.latents()) >= sae.num_latents:
            raise ConfigError(
                "concepts",
                f"{concept.concept!r} selects latent {max(concept.latents())}, but the SAE "
                f"has {sae.num_latents}",
            )
    if cfg.rule == "anchor":
        bare = [c.concept for c in concept_list if c.anchor_indices is None]
        if bare:
            raise ConfigError(
                "rule",
                f"rule 'anchor' needs features with an anchor; {', '.join(map(repr, bare))} "
                "has none (ConceptFeatures.with_anchor adds one)",
            )
    check_same_sae(concept_list, sae)
    return Erasure(pipe, sae, concept_list, multipliers, cfg, hookpoint, module)


def activation_site(cfg: EraseConfig, sae: Sae) -> str:
    """The site the SAE reads: the config's, else the one it was trained on."""
    return cfg.activation_site or sae.meta.get("activation_site", "output")


def check_prompt_encoder_edit(
    hookpoint: str, cfg: EraseConfig, sae: Sae, concepts: Sequence[ConceptFeatures]
) -> None:
    """Refuse what has no meaning before the first step: a window of the schedule, a site
    defined by the CFG batch or the block input, statistics with more than one step."""
    if cfg.window is not None:
        raise ConfigError(
            "window", f"got {cfg.window}; {hookpoint} runs once per prompt, before the "
            "denoising steps, so it takes no window (leave it unset)"
        )  # fmt: skip
    site = activation_site(cfg, sae)
    if site != "output":
        raise ConfigError(
            "activation_site", f"got {site!r}; at {hookpoint} (a prompt encoder) only "
            "'output' is defined"
        )  # fmt: skip
    stepped = [c.concept for c in concepts if c.num_steps != 1]
    if stepped:
        raise ConfigError(
            "concepts", f"{', '.join(map(repr, stepped))} has statistics over several "
            f"denoising steps; {hookpoint} needs statistics from a capture of that prompt "
            "encoder (one row)"
        )  # fmt: skip


@contextmanager
def erase(
    pipe: Any,
    sae: Sae,
    concepts: ConceptFeatures | Sequence[ConceptFeatures] | Mapping[str, ConceptFeatures],
    config: EraseConfig | None = None,
    *,
    warn_unedited: bool = True,
    **overrides: Any,
) -> Iterator[Erasure]:
    """:func:`attach` for the length of a ``with`` block; always removed after, errors
    included::

        with saeuron.erase(pipe, sae, features, multiplier=-20.0) as erasure:
            images = pipe(prompt).images

    A block in which the pipeline ran but not one token was edited ends with a warning
    (``warn_unedited=False`` turns it off, for runs where that is expected).
    """
    erasure = attach(pipe, sae, concepts, config, **overrides)
    try:
        yield erasure
    finally:
        erasure.remove()
    if warn_unedited:
        warn_if_unedited([erasure])


def warn_if_unedited(erasures: Sequence[Erasure]) -> bool:
    """Warn (and return True) when the erasures' hooks ran but edited no token at all."""
    if not erasures or any(e.calls == 0 or e.edited_tokens > 0 for e in erasures):
        return False
    names = [name for e in erasures for name in e.concepts]
    if not names:
        return False
    logger.warning(
        "nothing was erased: the latents of %s never cleared their thresholds in this "
        "generation (a prompt without the concept edits nothing; with the concept, try a "
        "stronger multiplier, more latents or features built for this model and schedule)",
        ", ".join(repr(n) for n in names),
    )
    return True
