"""Which latents tell a concept apart: contrastive scores and selection (SAeUron, section 3).

    mu_notc[t] = the token-mean code over the prompts of every other concept (prompt-weighted)
    s[t]       = mu_c[t] / sum(mu_c[t]) - mu_notc[t] / sum(mu_notc[t])

Per step, the selected latents are those whose score is strictly above the p-th percentile
of ``s`` (numpy's linear interpolation: with 20,480 latents p = 99.999 / 99.995 / 99.99 pick
1 / 2 / 3), or the top ``tau``. Each gets the threshold the erasing hook compares against: the
mean over all concepts (target and every other one) of their per-concept means.

The shortcut needs no other concepts: the top ``tau`` latents by mean activation at one step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.features import ConceptFeatures
from saeuron.utils.config import ConfigError

logger = logging.getLogger(__name__)


def percentile_count(n_latents: int, percentile: float) -> int:
    """How many of ``n_latents`` distinct scores lie strictly above their ``percentile``.

    numpy's linear interpolation puts the percentile at rank ``(n - 1) p / 100``; with 20,480
    latents, 99.999 / 99.995 / 99.99 give 1 / 2 / 3. Used to turn a percentile into a
    ``tau`` where only a count makes sense (the shortcut).
    """
    position = (n_latents - 1) * percentile / 100.0
    return max(1, n_latents - 1 - math.floor(position))


def _normalised(mu: Tensor) -> Tensor:
    total = mu.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, mu / total.clamp_min(torch.finfo(mu.dtype).tiny), 0.0)


def pooled_mean(others: Sequence[ConceptStats]) -> Tensor:
    """Prompt-weighted mean of several concepts' means: the mean over all their prompts."""
    weights = torch.tensor([o.n_prompts for o in others], dtype=torch.float64)
    stacked = torch.stack([o.mean.double() for o in others])
    return ((stacked * weights[:, None, None]).sum(0) / weights.sum()).float()


def contrastive_scores(target: ConceptStats, others: Sequence[ConceptStats]) -> Tensor:
    """``[steps, n_latents]``: ``mu_c / sum(mu_c) - mu_notc / sum(mu_notc)`` at each step."""
    _check_compatible(target, others)
    mu_c = target.mean.double()
    mu_notc = pooled_mean(others).double()
    return _normalised(mu_c) - _normalised(mu_notc)


def _check_compatible(target: ConceptStats, others: Sequence[ConceptStats]) -> None:
    if not others:
        raise ValueError("contrastive selection needs the statistics of at least one other concept")
    for other in others:
        if other.mean.shape != target.mean.shape:
            raise ValueError(
                f"statistics of {other.concept!r} {tuple(other.mean.shape)} do not match "
                f"{target.concept!r} {tuple(target.mean.shape)}: same SAE and steps needed"
            )
        if other.steps != target.steps:
            raise ValueError(
                f"{other.concept!r} was read at steps {other.steps}, {target.concept!r} at "
                f"{target.steps}"
            )
        for key in ("hookpoint", "num_inference_steps"):
            a, b = target.meta.get(key), other.meta.get(key)
            if a is not None and b is not None and a != b:
                raise ValueError(f"{key} differs: {target.concept!r} {a}, {other.concept!r} {b}")


def _pack(rows: list[Tensor], *values: Tensor) -> tuple[Tensor, ...]:
    """Per-step index lists -> ``[steps, m]`` tensors padded with -1 (indices) and 0."""
    width = max((len(r) for r in rows), default=0)
    indices = torch.full((len(rows), width), -1, dtype=torch.long)
    packed = [torch.zeros(len(rows), width) for _ in values]
    for step, chosen in enumerate(rows):
        indices[step, : len(chosen)] = chosen
        for out, value in zip(packed, values, strict=True):
            out[step, : len(chosen)] = value[step, chosen].float()
    return (indices, *packed)


def _top(scores: Tensor, eligible: Tensor, count: int) -> Tensor:
    """Indices of the ``count`` best eligible scores, best first (ties: lower index first)."""
    candidates = torch.nonzero(eligible).flatten()
    order = torch.argsort(-scores[candidates], stable=True)
    return candidates[order[:count]]


def select_contrastive(
    target: ConceptStats,
    others: Sequence[ConceptStats],
    *,
    percentile: float | None = None,
    tau: int | None = None,
    active_range: tuple[float, float] | None = None,
    max_other_ratio: float | None = None,
    threshold_concepts: int | None = None,
    active_gate: float | None = None,
) -> ConceptFeatures:
    """The latents that tell ``target`` apart from ``others``, per step.

    SAeUron's selection (docs/method.md, section 4).

    Exactly one of ``percentile`` (keep scores strictly above the p-th percentile, numpy
    linear interpolation) and ``tau`` (keep the top tau) is given. ``active_range=(lo, hi)``
    first removes from the candidates every latent active on fewer than ``lo`` or
    more than ``hi`` of the target's tokens; the percentile is then taken over the remaining
    candidates, so the filter does not leave a step empty just because its best latent was
    dropped. ``max_other_ratio=r`` likewise drops every latent whose mean on any single other
    concept exceeds ``r`` times its mean on the target: the score compares the target with the
    pool of others, so a latent shared with one close neighbour (dotted and grainy) can win it
    and then be erased on that neighbour too. Thresholds: the mean over all concepts of their
    per-concept means, as the paper takes it over its 20 or 50 concepts;
    ``threshold_concepts=K`` calibrates that mean for a smaller set (see
    :func:`calibrated_threshold`). ``active_gate=q`` raises each threshold to at least ``q``
    times the latent's mean activation on the target's tokens where it fires: the paper's
    threshold is a mean over all tokens, silent ones included, so nearly every token where the
    latent fires at all clears it, and edits of several concepts stacked together reach
    the weak activations they leave on other concepts' images.
    """
    _check_selection_args(
        percentile, tau, active_range, max_other_ratio, threshold_concepts, active_gate
    )
    others = list(others)
    scores = contrastive_scores(target, others)
    eligible = _eligible(target, others, scores, active_range, max_other_ratio)
    rows = [_pick_step(row, ok, percentile, tau) for row, ok in zip(scores, eligible)]
    threshold, counted = _gated_threshold(target, others, threshold_concepts, active_gate)
    # What the latent does on the rest (each other concept once): the ablate and anchor
    # edit rules bring an erased latent back to it instead of driving it negative.
    retained = torch.stack([o.mean for o in others]).mean(0)
    indices, mean, thr, retain = _pack(rows, target.mean, threshold, retained)
    counts = [len(r) for r in rows]
    if sum(counts) == 0:
        logger.warning("concept %r: no latent selected at any step", target.concept)
    settings = (percentile, tau, active_range, max_other_ratio, active_gate)
    meta = _contrastive_meta(target, others, counts, counted, *settings)
    _warn_partial_steps(target)
    return ConceptFeatures(
        concept=target.concept,
        indices=indices,
        mean=mean,
        threshold=thr,
        timesteps=target.timesteps.clone(),
        meta=meta,
        retain=retain,
    )


def _check_selection_args(
    percentile: float | None,
    tau: int | None,
    active_range: tuple[float, float] | None,
    max_other_ratio: float | None,
    threshold_concepts: int | None,
    active_gate: float | None,
) -> None:
    """Refuse a bad setting before any score is computed."""
    if (percentile is None) == (tau is None):
        raise ValueError("give exactly one of percentile and tau")
    if percentile is not None and not 0 < percentile < 100:
        raise ConfigError("percentile", f"got {percentile!r}; must be > 0 and < 100")
    if tau is not None and tau < 1:
        raise ConfigError("tau", f"got {tau!r}; must be >= 1")
    if active_range is not None and not 0 <= active_range[0] < active_range[1] <= 1:
        raise ConfigError("active_range", f"got {active_range!r}; need 0 <= lo < hi <= 1")
    if max_other_ratio is not None and not max_other_ratio > 0:
        raise ConfigError("max_other_ratio", f"got {max_other_ratio!r}; must be > 0")
    if threshold_concepts is not None and threshold_concepts < 1:
        raise ConfigError("threshold_concepts", f"got {threshold_concepts!r}; must be >= 1")
    if active_gate is not None and not 0 <= active_gate < float("inf"):
        raise ConfigError("active_gate", f"got {active_gate!r}; must be >= 0 and finite")


def _eligible(
    target: ConceptStats,
    others: Sequence[ConceptStats],
    scores: Tensor,
    active_range: tuple[float, float] | None,
    max_other_ratio: float | None,
) -> Tensor:
    """``[steps, n_latents]`` bool: the candidates left by the specificity filters."""
    eligible = torch.ones_like(scores, dtype=torch.bool)
    if active_range is not None:
        lo, hi = active_range
        eligible = (target.active_frac >= lo) & (target.active_frac <= hi)
    if max_other_ratio is not None:
        loudest_other = torch.stack([o.mean for o in others]).amax(0)
        eligible &= (target.mean > 0) & (loudest_other <= max_other_ratio * target.mean)
    return eligible


def _pick_step(scores: Tensor, ok: Tensor, percentile: float | None, tau: int | None) -> Tensor:
    """One step's selected latents, best first: the top ``tau`` eligible ones, or those
    strictly above the percentile of the eligible scores."""
    if not bool(ok.any()):
        return torch.zeros(0, dtype=torch.long)
    if tau is not None:
        return _top(scores, ok, tau)
    candidate_scores = scores[ok].numpy()
    cut = float(np.percentile(candidate_scores, percentile, method="linear"))
    above = ok & (scores > cut)
    return _top(scores, above, int(above.sum()))


def _gated_threshold(
    target: ConceptStats,
    others: Sequence[ConceptStats],
    threshold_concepts: int | None,
    active_gate: float | None,
) -> tuple[Tensor, int]:
    """:func:`calibrated_threshold`, raised by ``active_gate`` where it is set."""
    threshold, counted = calibrated_threshold(target, others, threshold_concepts)
    if active_gate:
        when_active = torch.where(
            target.active_frac > 0, target.mean / target.active_frac.clamp_min(1e-12), 0.0
        )
        threshold = torch.maximum(threshold, active_gate * when_active)
    return threshold, counted


def _contrastive_meta(
    target: ConceptStats,
    others: Sequence[ConceptStats],
    counts: list[int],
    counted: int,
    percentile: float | None,
    tau: int | None,
    active_range: tuple[float, float] | None,
    max_other_ratio: float | None,
    active_gate: float | None,
) -> dict[str, Any]:
    """What the features record of how they were selected."""
    return _features_meta(target) | {
        "method": "contrastive",
        "percentile": percentile,
        "tau": tau,
        "active_range": list(active_range) if active_range is not None else None,
        "max_other_ratio": max_other_ratio,
        "others": [o.concept for o in others],
        "others_prompts": sum(o.n_prompts for o in others),
        "threshold_concepts": counted,
        "active_gate": active_gate,
        "selected_per_step": counts,
    }


def _warn_partial_steps(target: ConceptStats) -> None:
    """Statistics of a subset of the steps are applied by position in the schedule."""
    if target.steps != list(range(int(target.meta.get("num_inference_steps", target.num_steps)))):
        logger.warning(
            "concept %r: statistics cover steps %s only; they are mapped onto sampling steps "
            "by position in the schedule",
            target.concept,
            target.steps,
        )


def calibrated_threshold(
    target: ConceptStats, others: Sequence[ConceptStats], concepts: int | None = None
) -> tuple[Tensor, int]:
    """Each latent's threshold and the number of concepts it stands for.

    The paper's threshold is the mean over all its concepts of their mean activation: the
    target counts once among 20 (objects) or 50 (styles), ``mu_c / K + (1 - 1/K) x mean of
    the others``. Against a small set, say the bundled neutral prompts as the one other
    concept, the same formula gives the target half the weight, so a latent that fires on its
    concept alone gets a threshold near ``mu_c / 2``, ten to twenty-five times the paper's,
    and the concept is edited far less. With ``concepts=K`` the others are taken as a sample
    of the K - 1 concepts the paper averages over: the threshold is
    ``mu_c / K' + (1 - 1/K') x mean of the others`` with ``K' = max(K, 1 + len(others))``,
    which is exactly the paper's mean once ``others`` holds K - 1 concepts or more.
    """
    given = 1 + len(others)
    counted = max(given, concepts or 1)
    # Every concept counts once, whatever its number of prompts.
    if counted == given:
        return torch.stack([target.mean] + [o.mean for o in others]).mean(0), counted
    rest = torch.stack([o.mean for o in others]).mean(0)
    return target.mean / counted + (1 - 1 / counted) * rest, counted


def select_shortcut(
    target: ConceptStats,
    *,
    tau: int,
    step: int = 0,
    neutral: ConceptStats | None = None,
) -> ConceptFeatures:
    """The shortcut for a new concept: the top ``tau`` latents by mean activation at one
    row ``step``.

    The result holds one step, i.e. it applies at every sampling step. Threshold: 0 (edit
    wherever the latent is active) unless ``neutral`` statistics of the same denoising step
    are given; then the neutral mean of each latent, so only tokens where the latent is more
    active than on ordinary content are edited.
    """
    if tau < 1:
        raise ConfigError("tau", f"got {tau!r}; must be >= 1")
    if not 0 <= step < target.num_steps:
        raise ValueError(f"step: got {step}; the statistics hold {target.num_steps} rows")
    mean = target.mean[step]
    chosen = _top(mean, mean > 0, tau)
    if len(chosen) < tau:
        logger.warning(
            "concept %r: only %d latents are ever active at step %d; asked for %d",
            target.concept,
            len(chosen),
            target.steps[step],
            tau,
        )
    threshold = torch.zeros_like(mean)
    if neutral is not None:
        schedule_step = target.steps[step]
        if schedule_step not in neutral.steps or neutral.num_latents != target.num_latents:
            raise ValueError(
                f"neutral statistics (steps {neutral.steps}, {neutral.num_latents} latents) "
                f"lack step {schedule_step} with {target.num_latents} latents"
            )
        threshold = neutral.mean[neutral.steps.index(schedule_step)]
    indices, mean_row, thr = _pack([chosen], mean[None], threshold[None])
    meta = _features_meta(target) | {
        "method": "shortcut",
        "tau": tau,
        "shortcut_step": target.steps[step],
        "threshold": "neutral mean" if neutral is not None else "zero",
        "neutral": neutral.concept if neutral is not None else None,
        "selected_per_step": [len(chosen)],
    }
    return ConceptFeatures(
        concept=target.concept,
        indices=indices,
        mean=mean_row,
        threshold=thr,
        timesteps=target.timesteps[step : step + 1].clone(),
        meta=meta,
    )


def _features_meta(target: ConceptStats) -> dict[str, Any]:
    keep = (
        "hookpoint",
        "model",
        "sae",
        "num_inference_steps",
        "steps",
        "guidance_scale",
        "seed",
        "guidance_half",
        "activation_site",
    )
    meta = {k: target.meta[k] for k in keep if k in target.meta}
    meta["n_prompts"] = target.n_prompts
    return meta
