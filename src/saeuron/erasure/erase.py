"""The erasing hook: edit a concept's SAE latents while the stock pipeline samples.

At every step and token, for each selected latent f of concept c (docs/method.md, section 5)::

    if a_f > thr_f:   a_f <- gamma_c * mu_c[f] * a_f

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
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeuron.erasure.features import ConceptFeatures
from saeuron.models.denoiser import denoiser_device
from saeuron.models.denoising import DenoiseState, DenoiseTracker
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import (
    ACTIVATION_SITES,
    CFG_HALVES,
    conditional_rows,
    from_tokens,
    input_tensor,
    output_tensor,
    replace_output,
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.utils.config import Config, ConfigError, check_range, field

logger = logging.getLogger(__name__)

ERROR_TERMS = ("exact", "paper")


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
    cfg_half: str = field(
        "cond",
        choices=CFG_HALVES,
        help="'cond': edit the conditional half of the CFG batch; 'both': every row (the "
        "published code). Without CFG the whole batch is conditional either way",
    )
    error_term: str = field(
        "exact",
        choices=ERROR_TERMS,
        help="'exact': x + (a' - a) W_dec; 'paper': the published x_hat' + (x_hat - x)",
    )
    activation_site: str | None = field(
        None,
        choices=ACTIVATION_SITES,
        help="'output' or 'update' (output - input); default: what the SAE was trained on",
    )
    hookpoint: str | None = field(
        None, help="module to edit; default: the SAE's, else the concepts' hookpoint"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in self.multipliers.items():
            check_range(f"multipliers.{name}", value, ge=-MAX_MULTIPLIER, le=MAX_MULTIPLIER)

    def multiplier_of(self, concept: str) -> float:
        return float(self.multipliers.get(concept, self.multiplier))


class StepPlan(NamedTuple):
    indices: Tensor
    scale: Tensor
    threshold: Tensor
    decoder_rows: Tensor
    encoder_rows: Tensor
    """The selected latents' encoder rows: their activations without the full encode."""
    encoder_bias: Tensor


@dataclass
class EraseHandle:
    """What an :class:`Eraser` did so far: its hook's calls and the tokens it edited."""

    hookpoint: str
    concepts: list[str]
    calls: int = 0
    edited_tokens: int = 0


def _as_list(concepts: Any) -> list[ConceptFeatures]:
    if isinstance(concepts, ConceptFeatures):
        return [concepts]
    if isinstance(concepts, Mapping):
        return list(concepts.values())
    return list(concepts)


class _EraseHook:
    def __init__(
        self,
        sae: Sae,
        concepts: list[ConceptFeatures],
        multipliers: dict[str, float],
        cfg: EraseConfig,
        site: str,
        state: DenoiseState,
        handle: EraseHandle,
    ):
        self.sae = sae
        self.concepts = concepts
        self.multipliers = multipliers
        self.cfg = cfg
        self.site = site
        self.state = state
        self.handle = handle
        self._plans: dict[tuple[int, int], StepPlan | None] = {}
        self._mapping_logged = False
        self.enabled = True

    def reset_plans(self) -> None:
        """Forget the per-step plans (their scales hold the multipliers)."""
        self._plans.clear()

    def plan(self, step: int, num_steps: int) -> StepPlan | None:
        key = (step, num_steps)
        if key not in self._plans:
            self._plans[key] = self._build_plan(step, num_steps)
        return self._plans[key]

    def _build_plan(self, step: int, num_steps: int) -> StepPlan | None:
        indices, scales, thresholds = [], [], []
        for concept in self.concepts:
            if concept.num_steps not in (1, num_steps) and not self._mapping_logged:
                logger.info(
                    "concept %r: statistics from %d steps mapped onto %d sampling steps by "
                    "position in the schedule",
                    concept.concept,
                    concept.num_steps,
                    num_steps,
                )
                self._mapping_logged = True
            idx, mean, thr = concept.at(concept.stats_step(step, num_steps))
            indices.append(idx)
            scales.append(self.multipliers[concept.concept] * mean)
            thresholds.append(thr)
        if not indices or sum(len(i) for i in indices) == 0:
            return None
        idx, scale, thr = torch.cat(indices), torch.cat(scales), torch.cat(thresholds)
        # A latent chosen by several concepts is edited once, by the strongest edit (largest
        # |gamma * mu|) with that concept's threshold: stacking edits would compound scales.
        order = torch.argsort(-scale.abs(), stable=True)
        seen: set[int] = set()
        keep = []
        for position in order.tolist():
            latent = int(idx[position])
            if latent not in seen:
                seen.add(latent)
                keep.append(position)
        keep_t = torch.tensor(sorted(keep), dtype=torch.long)
        device, dtype = self.sae.device, self.sae.dtype
        idx = idx[keep_t].to(device)
        return StepPlan(
            indices=idx,
            scale=scale[keep_t].to(device, dtype),
            threshold=thr[keep_t].to(device, dtype),
            decoder_rows=self.sae.W_dec.detach()[idx],
            encoder_rows=self.sae.encoder.weight.detach()[idx],
            encoder_bias=self.sae.encoder.bias.detach()[idx],
        )

    # Not under no_grad: sampling already runs without gradients, and white-box attacks
    # (P4D) differentiate through the edited UNet.
    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        self.handle.calls += 1
        if not self.enabled or self.state.step < 0:
            return None
        plan = self.plan(self.state.step, self.state.num_steps)
        if plan is None and self.cfg.error_term == "exact":
            return None
        out = output_tensor(output)
        site = out - input_tensor(args, kwargs) if self.site == "update" else out
        rows = conditional_rows(out.shape[0], self.state.cfg, self.cfg.cfg_half)
        tokens = to_tokens(site[rows])
        flat = tokens.reshape(-1, tokens.shape[-1])
        if self.cfg.error_term == "exact":
            delta = self._exact_delta(flat, plan)
            if delta is None:
                return None
        else:
            delta = self._paper_output(flat, plan) - flat.to(self.sae.dtype)
        delta = from_tokens(delta.to(out.dtype).reshape(tokens.shape), site[rows])
        new = out.clone()
        new[rows] = new[rows] + delta
        return replace_output(output, new)

    def _exact_delta(self, flat: Tensor, plan: StepPlan | None) -> Tensor | None:
        if plan is None:
            return None
        sae = self.sae
        z, _, std = sae._standardise(flat.to(sae.dtype))
        # Only tokens where a selected latent clears its threshold can be edited. Those
        # latents' activations cost a few encoder rows; the full encode (20k latents, to
        # know whether they made the top k) is paid only for these candidate tokens. The
        # margin absorbs the rounding difference between a row subset and the full matmul,
        # so the candidates always include every token the full encode would edit.
        sel = F.relu((z - sae.b_dec) @ plan.encoder_rows.T + plan.encoder_bias)
        margin = 1e-3 * (plan.threshold.abs() + 1)
        candidates = torch.nonzero((sel > plan.threshold - margin).any(dim=-1)).flatten()
        if len(candidates) == 0:
            return None
        pre = sae.pre_acts(z[candidates] if len(candidates) < len(z) else z)
        kth = pre.topk(sae.cfg.k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True)
        # A latent's TopK activation is its pre-activation if it made the top k, else 0.
        acts = pre[:, plan.indices]
        acts = torch.where(acts >= kth.values, acts, torch.zeros_like(acts))
        edit = acts > plan.threshold
        if not bool(edit.any()):
            return None
        self.handle.edited_tokens += int(edit.any(dim=-1).sum())
        change = torch.where(edit, (plan.scale - 1) * acts, torch.zeros_like(acts))
        delta = change @ plan.decoder_rows
        if std is not None:
            delta = delta * (std[candidates] + 1e-5)
        # Tokens with no edit get an exact zero, so their bits survive the addition.
        delta = torch.where(edit.any(dim=-1, keepdim=True), delta, torch.zeros_like(delta))
        full = delta.new_zeros(flat.shape)
        return full.index_copy_(0, candidates, delta)

    def _paper_output(self, flat: Tensor, plan: StepPlan | None) -> Tensor:
        sae = self.sae
        z, mean, std = sae._standardise(flat.to(sae.dtype))
        top = sae.select_topk(sae.pre_acts(z))
        dense = top.top_acts.new_zeros(top.top_acts.shape[0], sae.num_latents)
        dense.scatter_(-1, top.top_indices, top.top_acts)
        x_hat = dense @ sae.W_dec + sae.b_dec
        if plan is not None:
            acts = dense[:, plan.indices]
            edit = acts > plan.threshold
            self.handle.edited_tokens += int(edit.any(dim=-1).sum())
            dense[:, plan.indices] = torch.where(edit, plan.scale * acts, acts)
        x_hat_edited = dense @ sae.W_dec + sae.b_dec
        if std is not None:
            x_hat = x_hat * (std + 1e-5) + mean
            x_hat_edited = x_hat_edited * (std + 1e-5) + mean
        # The published form: its "error" has the wrong sign, kept on purpose for comparison.
        return x_hat_edited + (x_hat - flat.to(sae.dtype))


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


class Eraser:
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
        self.handle = EraseHandle(hookpoint=hookpoint, concepts=[c.concept for c in concepts])
        site = cfg.activation_site or sae.meta.get("activation_site", "output")
        self._tracker = DenoiseTracker(pipe)
        self._hook = _EraseHook(
            sae, concepts, multipliers, cfg, site, self._tracker.state, self.handle
        )
        self._removable: Any = module.register_forward_hook(self._hook, with_kwargs=True)

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
        return self.handle.edited_tokens

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
                "concept", f"got {concept!r}; this eraser holds {', '.join(self.concepts)}"
            )
        check_range(
            f"multipliers.{concept}", float(multiplier), ge=-MAX_MULTIPLIER, le=MAX_MULTIPLIER
        )
        self._hook.multipliers[concept] = float(multiplier)
        self._hook.reset_plans()

    def disable(self) -> None:
        """Sample as if no eraser were attached (the hooks stay, doing nothing)."""
        self._hook.enabled = False

    def enable(self) -> None:
        self._hook.enabled = True

    def remove(self) -> None:
        """Take the hooks off the pipeline; calling it again does nothing."""
        if self._removable is not None:
            self._removable.remove()
            self._tracker.remove()
            self._removable = None

    def __enter__(self) -> Eraser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def attach(
    pipe: Any,
    sae: Sae,
    concepts: ConceptFeatures | Sequence[ConceptFeatures] | Mapping[str, ConceptFeatures],
    config: EraseConfig | None = None,
    **overrides: Any,
) -> Eraser:
    """Erase ``concepts`` in ``pipe`` from now until :meth:`Eraser.remove`.

    ``config`` (an :class:`EraseConfig`) and keyword ``overrides`` of its fields set the
    edit: ``attach(pipe, sae, cat, multiplier=-20.0)``. ``multiplier`` may also be a mapping
    from concept name to gamma naming every concept. The SAE follows the denoiser's device.
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
    hookpoint = cfg.hookpoint or sae.meta.get("hookpoint") or next(
        (c.hookpoint for c in concept_list if c.hookpoint), None
    )
    if hookpoint is None:
        raise ConfigError(
            "hookpoint", "name the module to edit, e.g. 'unet.up_blocks.1.attentions.1'"
        )
    module = resolve_module(pipe, hookpoint)
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
    sae.to(denoiser_device(pipe))
    return Eraser(pipe, sae, concept_list, multipliers, cfg, hookpoint, module)


@contextmanager
def erase(
    pipe: Any,
    sae: Sae,
    concepts: ConceptFeatures | Sequence[ConceptFeatures] | Mapping[str, ConceptFeatures],
    config: EraseConfig | None = None,
    *,
    warn_unedited: bool = True,
    **overrides: Any,
) -> Iterator[Eraser]:
    """:func:`attach` for the length of a ``with`` block; always removed after, errors
    included::

        with saeuron.erase(pipe, sae, features, multiplier=-20.0) as eraser:
            images = pipe(prompt).images

    A block in which the pipeline ran but not one token was edited ends with a warning
    (``warn_unedited=False`` turns it off, for runs where that is expected).
    """
    eraser = attach(pipe, sae, concepts, config, **overrides)
    try:
        yield eraser
    finally:
        eraser.remove()
    if warn_unedited:
        warn_if_unedited([eraser])


def warn_if_unedited(erasers: Sequence[Eraser]) -> bool:
    """Warn (and return True) when the erasers' hooks ran but edited no token at all."""
    if not erasers or any(e.calls == 0 or e.edited_tokens > 0 for e in erasers):
        return False
    names = [name for e in erasers for name in e.concepts]
    if not names:
        return False
    logger.warning(
        "nothing was erased: the latents of %s never cleared their thresholds in this "
        "generation (a prompt without the concept edits nothing; with the concept, try a "
        "stronger multiplier, more latents or features built for this model and schedule)",
        ", ".join(repr(n) for n in names),
    )
    return True
