"""The edit rules beyond the published one (``ablate``, ``anchor``, ``project``; see
:data:`saeuron.erasure.erase_config.RULES`).

:class:`RuleSet` plans and computes their edit; the hook
(:class:`saeuron.erasure.hook._EraseHook`) holds one, picks the step, site and rows, and adds
the edit. The published ``scale`` rule is in the hook itself.

Like ``scale``, each rule has two paths to the same edit: a sparse one (:meth:`RuleSet.edit`,
the CPU's: only candidate tokens pay the full encode) and a dense one
(:meth:`RuleSet.dense_edit`, on GPUs and under ``torch.compile``): every step's plan padded
into a :class:`RuleTable` looked up by the step tensor, every token encoded and every
decision a mask, so no shape depends on the data and one compiled graph serves every step.
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


class RuleTable(NamedTuple):
    """Every step's plan as padded tensors, ``S`` steps by ``C`` concepts by the ``J``
    latents any step reads. Outside a concept's latents at a step, the threshold is +inf (a
    pad never edits), the means are 0 and the anchor mask is false."""

    needed: Tensor
    """``[J]`` the latents read at any step, by any concept or anchor."""
    threshold: Tensor
    """``[S, C, J]``"""
    retain: Tensor
    """``[S, C, J]``"""
    mean: Tensor
    """``[S, C, J]`` the concept's means (the anchor's strength reads them)."""
    anchor_mean: Tensor
    """``[S, C, J]``"""
    anchor_mask: Tensor
    """``[S, C, J]`` bool: the anchor's latents."""
    gamma: Tensor
    """``[C]`` each concept's strength."""
    basis: Tensor | None
    """``[S, C, d_in, K]`` (``project`` only) an orthonormal basis of each concept's decoder
    directions, padded with zero columns (which project onto nothing)."""
    decoder_rows: Tensor
    """``[J, d_in]``"""
    active: Tensor
    """``[S]`` bool: the window lets the hook edit this step."""


class _ConceptStep(NamedTuple):
    """One concept's statistics at one step, as the rules read them."""

    indices: Tensor
    mean: Tensor
    threshold: Tensor
    retain: Tensor
    gamma: float
    anchor_indices: Tensor
    anchor_mean: Tensor


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

    def _concept_steps(self, rows: tuple[int, ...]) -> list[_ConceptStep]:
        """Every concept's statistics at its row ``rows[i]`` (an anchor only for ``anchor``)."""
        steps = []
        for concept, at in zip(self.concepts, rows):
            idx, mean, thr = concept.at(at)
            anchor_idx, anchor_mean = concept.anchor_at(at)
            if self.rule != "anchor":
                anchor_idx, anchor_mean = anchor_idx[:0], anchor_mean[:0]
            steps.append(
                _ConceptStep(idx, mean, thr, concept.retain_at(at),
                             float(self.multipliers[concept.concept]), anchor_idx, anchor_mean)
            )  # fmt: skip
        return steps

    def plan(self, rows: tuple[int, ...], weights: SaeWeights) -> RulePlan | None:
        """The edit of the concepts' statistics ``rows``, for activations on the device and
        in the dtype of ``weights``; ``None`` where no concept selects a latent."""
        key = (rows, weights.encoder.device, weights.encoder.dtype)
        if key not in self._plans:
            self._plans[key] = self._build_plan(rows, weights)
        return self._plans[key]

    def _build_plan(self, rows: tuple[int, ...], w: SaeWeights) -> RulePlan | None:
        device, dtype = w.encoder.device, w.encoder.dtype
        parts = [p for p in self._concept_steps(rows) if len(p.indices)]
        if not parts:
            return None
        needed = torch.unique(torch.cat([torch.cat([p.indices, p.anchor_indices]) for p in parts]))
        column = {int(latent): i for i, latent in enumerate(needed.tolist())}
        as_cols = lambda idx: torch.tensor(  # noqa: E731
            [column[int(i)] for i in idx], dtype=torch.long, device=device
        )
        concepts = [
            _ConceptRule(
                as_cols(p.indices), p.mean.to(device, dtype), p.threshold.to(device, dtype),
                p.retain.to(device, dtype), p.gamma, as_cols(p.anchor_indices),
                p.anchor_mean.to(device, dtype),
            )  # fmt: skip
            for p in parts
        ]
        gate_idx = torch.cat([p.indices for p in parts]).to(device)
        needed = needed.to(device)
        return RulePlan(
            needed=needed,
            concepts=concepts,
            gate_threshold=torch.cat([p.threshold for p in parts]).to(device, dtype),
            gate_encoder_rows=w.encoder[gate_idx],
            gate_encoder_bias=w.encoder_bias[gate_idx],
            decoder_rows=w.decoder[needed],
        )

    def table(
        self, step_rows: list[tuple[int, ...]], active: list[bool], w: SaeWeights
    ) -> RuleTable | None:
        """Every step's plan (``step_rows[s]``: the concepts' statistics rows at step ``s``;
        ``active[s]``: the window lets it edit) for the dense path, on the device and in the
        dtype of ``w``; ``None`` where no step selects a latent. The caller keeps it: it
        holds the multipliers of the moment."""
        device, dtype = w.encoder.device, w.encoder.dtype
        # Steps outside the window read nothing: their rows stay pads.
        steps = [self._concept_steps(rows) if on else None for rows, on in zip(step_rows, active)]
        read = [torch.cat([p.indices, p.anchor_indices]) for parts in steps if parts for p in parts]
        if not read or not sum(len(r) for r in read):
            return None
        needed = torch.unique(torch.cat(read))
        column = {int(latent): i for i, latent in enumerate(needed.tolist())}
        shape = (len(steps), len(self.concepts), len(needed))
        threshold = torch.full(shape, float("inf"))
        retain, mean, anchor_mean = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
        anchor_mask = torch.zeros(shape, dtype=torch.bool)
        bases: dict[tuple[int, int], Tensor] = {}
        for s, parts in enumerate(steps):
            for c, p in enumerate(parts or []):
                cols = [column[int(i)] for i in p.indices]
                threshold[s, c, cols], retain[s, c, cols], mean[s, c, cols] = (
                    p.threshold, p.retain, p.mean
                )
                anchor_cols = [column[int(i)] for i in p.anchor_indices]
                anchor_mask[s, c, anchor_cols] = True
                anchor_mean[s, c, anchor_cols] = p.anchor_mean
                if self.rule == "project" and len(cols):
                    bases[s, c] = torch.linalg.qr(w.decoder[p.indices.to(device)].T.float())[0]
        basis = None
        if self.rule == "project":
            width = max((b.shape[1] for b in bases.values()), default=0)
            basis = torch.zeros(*shape[:2], w.decoder.shape[1], max(width, 1), device=device)
            for (s, c), b in bases.items():
                basis[s, c, :, : b.shape[1]] = b
            basis = basis.to(dtype)
        gamma = torch.tensor([float(self.multipliers[c.concept]) for c in self.concepts])
        return RuleTable(
            needed=needed.to(device),
            threshold=threshold.to(device, dtype),
            retain=retain.to(device, dtype),
            mean=mean.to(device, dtype),
            anchor_mean=anchor_mean.to(device, dtype),
            anchor_mask=anchor_mask.to(device),
            gamma=gamma.to(device, dtype),
            basis=basis,
            decoder_rows=w.decoder[needed.to(device)],
            active=torch.tensor(active, device=device),
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

    def dense_edit(self, flat: Tensor, w: SaeWeights, table: RuleTable, step: Tensor) -> RuleEdit:
        """The rule's edit of every token of ``flat`` at the step tensor ``step`` (``[1]``),
        with no host sync and no data-dependent shape: the same edit as :meth:`edit`."""
        sae = self.sae
        at = lambda t: t.index_select(0, step).squeeze(0)  # noqa: E731
        z, _, std = sae.standardise(flat)
        acts = sae.topk_acts(sae.pre_acts(z, w), table.needed)
        threshold = at(table.threshold)
        if self.rule == "project":
            assert table.basis is not None
            change, edited = self._dense_project(z - w.b_dec, acts, threshold, at(table.basis),
                                                 table.gamma)  # fmt: skip
        else:
            new = acts
            retain, mean = at(table.retain), at(table.mean)
            anchor_mean, anchor_mask = at(table.anchor_mean), at(table.anchor_mask)
            # Concepts in order, as the sparse path: a later concept's write wins a latent.
            for c in range(len(self.concepts)):
                hit = acts > threshold[c]
                gamma = table.gamma[c]
                new = torch.where(hit, retain[c] + gamma * (acts - retain[c]), new)
                if self.rule == "anchor":
                    gate = hit.any(dim=-1, keepdim=True) & anchor_mask[c]
                    strength = (acts * mean[c]).sum(-1, keepdim=True) / (mean[c] * mean[c]).sum(
                    ).clamp_min(torch.finfo(mean.dtype).tiny)  # fmt: skip
                    target = (1.0 - gamma.clamp_max(0.0)) * strength.clamp_min(0) * anchor_mean[c]
                    new = torch.where(gate, torch.maximum(new, target), new)
            diff = new - acts
            edited = (diff != 0).any(dim=-1, keepdim=True)
            change = diff @ table.decoder_rows
        edited = edited & at(table.active)
        delta = sae.unstandardise_delta(change, std)
        return RuleEdit(torch.where(edited, delta, torch.zeros_like(delta)), edited)

    @staticmethod
    def _dense_project(
        centred: Tensor, acts: Tensor, threshold: Tensor, basis: Tensor, gamma: Tensor
    ) -> tuple[Tensor, Tensor]:
        total = torch.zeros_like(centred)
        edited = torch.zeros(len(centred), 1, dtype=torch.bool, device=centred.device)
        for c in range(len(gamma)):
            hit = (acts > threshold[c]).any(dim=-1, keepdim=True)
            component = (centred @ basis[c]) @ basis[c].T
            total = total + torch.where(hit, (gamma[c] - 1.0) * component, 0.0)
            edited = edited | hit
        return total, edited
