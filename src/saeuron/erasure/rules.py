"""The edit rules beyond the published one (``ablate``, ``anchor``, ``project``; see
:data:`saeuron.erasure.erase_config.RULES`), run eagerly by the erasing hook.

:class:`RuleSet` plans and computes their edit; the hook
(:class:`saeuron.erasure.hook._EraseHook`) holds one, picks the step, site and rows, and adds
the edit. The published ``scale`` rule is in the hook itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from saeuron.erasure.candidates import candidate_tokens, place_candidates, take_candidates
from saeuron.erasure.features import ConceptFeatures
from saeuron.sae import Sae
from saeuron.sae.model import SaeWeights


class _ConceptRule(NamedTuple):
    cols: Tensor
    """Positions of the concept's latents among ``RulePlan.needed``."""
    mean: Tensor
    threshold: Tensor
    retain: Tensor
    gamma: float
    anchor_cols: Tensor
    anchor_mean: Tensor


class RulePlan(NamedTuple):
    """One step of the rules beyond ``scale``: every latent read, per concept."""

    needed: Tensor
    concepts: list[_ConceptRule]
    gate_threshold: Tensor
    gate_encoder_rows: Tensor
    gate_encoder_bias: Tensor
    decoder_rows: Tensor


class RuleEdit(NamedTuple):
    """What a rule does to one call's tokens."""

    delta: Tensor
    """The change of every token, ``[tokens, d_in]`` (exact zeros where nothing is edited)."""
    edited: Tensor
    """``[candidates, 1]`` bool: the candidate tokens edited (for the hook's counter)."""


class RuleSet:
    """The rule beyond ``scale`` that one hook applies, with its per-step plans.

    ``multipliers`` is the hook's own dict: a changed multiplier (``Erasure.set_multiplier``)
    reaches the rules through it, once :meth:`reset` drops the plans that hold the old one.
    """

    def __init__(
        self,
        sae: Sae,
        concepts: list[ConceptFeatures],
        multipliers: dict[str, float],
        rule: str,
    ) -> None:
        self.sae = sae
        self.concepts = concepts
        self.multipliers = multipliers
        self.rule = rule
        self._plans: dict[tuple[object, ...], RulePlan | None] = {}

    def reset(self) -> None:
        """Forget the plans (they hold the multipliers)."""
        self._plans.clear()

    def plan(self, rows: tuple[int, ...], weights: SaeWeights) -> RulePlan | None:
        """The edit of the concepts' statistics ``rows``, for activations on the device and
        in the dtype of ``weights``; ``None`` where no concept selects a latent."""
        key = (rows, weights.encoder.device, weights.encoder.dtype)
        if key not in self._plans:
            self._plans[key] = self._build_plan(rows, weights)
        return self._plans[key]

    def _build_plan(self, rows: tuple[int, ...], w: SaeWeights) -> RulePlan | None:
        device, dtype = w.encoder.device, w.encoder.dtype
        anchor = self.rule == "anchor"
        parts = []
        for concept, at in zip(self.concepts, rows):
            idx, mean, thr = concept.at(at)
            if len(idx) == 0:
                continue
            anchor_idx, anchor_mean = concept.anchor_at(at)
            if not anchor:
                anchor_idx, anchor_mean = anchor_idx[:0], anchor_mean[:0]
            parts.append(
                (idx, mean, thr, concept.retain_at(at), self.multipliers[concept.concept],
                 anchor_idx, anchor_mean)
            )  # fmt: skip
        if not parts:
            return None
        needed = torch.unique(torch.cat([torch.cat([p[0], p[5]]) for p in parts]))
        column = {int(latent): i for i, latent in enumerate(needed.tolist())}
        concepts = []
        for idx, mean, thr, retain, gamma, anchor_idx, anchor_mean in parts:
            cols = torch.tensor([column[int(i)] for i in idx], dtype=torch.long, device=device)
            anchor_cols = torch.tensor(
                [column[int(i)] for i in anchor_idx], dtype=torch.long, device=device
            )
            concepts.append(
                _ConceptRule(
                    cols, mean.to(device, dtype), thr.to(device, dtype),
                    retain.to(device, dtype), float(gamma), anchor_cols,
                    anchor_mean.to(device, dtype),
                )
            )  # fmt: skip
        gate_idx = torch.cat([p[0] for p in parts]).to(device)
        needed = needed.to(device)
        return RulePlan(
            needed=needed,
            concepts=concepts,
            gate_threshold=torch.cat([p[2] for p in parts]).to(device, dtype),
            gate_encoder_rows=w.encoder[gate_idx],
            gate_encoder_bias=w.encoder_bias[gate_idx],
            decoder_rows=w.decoder[needed],
        )

    def edit(self, flat: Tensor, w: SaeWeights, plan: RulePlan) -> RuleEdit | None:
        """The rule's edit of the tokens ``flat`` (``[tokens, d_in]``); ``None`` where no
        token is edited."""
        sae = self.sae
        z, _, std = sae.standardise(flat)
        # As on the hook's sparse path: only tokens where a concept latent may clear its
        # threshold pay for the full encode.
        candidates = candidate_tokens(
            z, w, plan.gate_encoder_rows, plan.gate_encoder_bias, plan.gate_threshold
        )
        if len(candidates) == 0:
            return None
        zc = take_candidates(z, candidates)
        acts = sae.topk_acts(sae.pre_acts(zc, w), plan.needed)
        std_c = None if std is None else std[candidates]
        if self.rule == "project":
            found = self._project(zc, acts, w, plan)
        else:
            found = self._rewrite(acts, plan)
        if found is None:
            return None
        change, edited = found
        delta = sae.unstandardise_delta(change, std_c)
        return RuleEdit(place_candidates(delta, edited, candidates, flat.shape), edited)

    def _rewrite(self, acts: Tensor, plan: RulePlan) -> tuple[Tensor, Tensor] | None:
        """``ablate`` and ``anchor``: new values of the concept (and anchor) latents, decoded
        as a change; the standardised change and the edited tokens."""
        new = acts.clone()
        for c in plan.concepts:
            own = acts[:, c.cols]
            hit = own > c.threshold
            if not bool(hit.any()):
                continue
            new[:, c.cols] = torch.where(hit, c.retain + c.gamma * (own - c.retain), new[:, c.cols])
            if len(c.anchor_cols):
                gate = hit.any(dim=-1, keepdim=True)
                strength = (own * c.mean).sum(-1, keepdim=True) / (c.mean * c.mean).sum().clamp_min(
                    torch.finfo(c.mean.dtype).tiny
                )
                # Pulled in as hard as the concept is pushed out: gain 1 at gamma 0 (a plain
                # swap), 1 - gamma when gamma overshoots.
                target = (1.0 - min(c.gamma, 0.0)) * strength.clamp_min(0) * c.anchor_mean
                current = new[:, c.anchor_cols]
                new[:, c.anchor_cols] = torch.where(gate, torch.maximum(current, target), current)
        change = new - acts
        edited = (change != 0).any(dim=-1, keepdim=True)
        if not bool(edited.any()):
            return None
        return change @ plan.decoder_rows, edited

    def _project(
        self, zc: Tensor, acts: Tensor, w: SaeWeights, plan: RulePlan
    ) -> tuple[Tensor, Tensor] | None:
        """``project``: the token's component in the span of each present concept's decoder
        directions, scaled by ``gamma - 1``; the standardised change and the edited tokens."""
        total = torch.zeros(len(zc), zc.shape[-1], dtype=zc.dtype, device=zc.device)
        edited = torch.zeros(len(zc), 1, dtype=torch.bool, device=zc.device)
        centred = zc - w.b_dec
        for c in plan.concepts:
            hit = (acts[:, c.cols] > c.threshold).any(dim=-1, keepdim=True)
            if not bool(hit.any()):
                continue
            # An orthonormal basis of the concept's decoder directions.
            basis, _ = torch.linalg.qr(plan.decoder_rows[c.cols].T)
            component = (centred @ basis) @ basis.T
            total = total + torch.where(hit, (c.gamma - 1.0) * component, 0.0)
            edited |= hit
        if not bool(edited.any()):
            return None
        return total, edited
