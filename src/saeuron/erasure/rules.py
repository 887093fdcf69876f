"""The edit rules beyond the published one (``ablate``, ``anchor``, ``project``; see
:data:`saeuron.erasure.erase_config.RULES`), run eagerly by the erasing hook.

:class:`RuleEdits` is the part of the hook (:class:`saeuron.erasure.hook.EraseHook`) that
plans and applies them; the published ``scale`` rule is in the hook itself.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeuron.erasure.erase_config import EraseConfig
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.hook_state import EraseHandle, _Weights
from saeuron.models.denoising import DenoiseState
from saeuron.models.tokens import (
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.sae.model import UNIT_NORM_EPS

logger = logging.getLogger(__name__)


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


class RuleEdits:
    """The rule methods of the erasing hook (mixed into it; they use its SAE, config,
    concepts, multipliers, weights, site and counters)."""

    sae: Sae
    cfg: EraseConfig
    concepts: list[ConceptFeatures]
    multipliers: dict[str, float]
    handle: EraseHandle
    state: DenoiseState

    def rule_plan(
        self, rows: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> RulePlan | None:
        key = (rows, device, dtype)
        if key not in self._rule_plans:
            self._rule_plans[key] = self._build_rule_plan(rows, device, dtype)
        return self._rule_plans[key]

    def _build_rule_plan(
        self, rows: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> RulePlan | None:
        anchor = self.cfg.rule == "anchor"
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
        w = self.weights(device, dtype)
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

    @torch.compiler.disable
    def _apply_rule(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        out: Tensor,
        dtype: torch.dtype,
        counting: bool,
    ) -> Any:
        state = self.state
        if not self._in_window(state):
            return None
        plan = self.rule_plan(self._current_rows(state), out.device, dtype)
        if plan is None:
            return None
        picked = self._site(module, out, args, kwargs)
        if picked is None:
            return None
        site, rows_ = picked
        tokens = to_tokens(site)
        flat = tokens.reshape(-1, tokens.shape[-1]).to(dtype)
        delta = self._rule_delta(flat, self.weights(out.device, dtype), plan, counting)
        if delta is None:
            return None
        return self._add_delta(module, output, out, site, rows_, tokens, delta, counting)

    def _rule_delta(
        self, flat: Tensor, w: _Weights, plan: RulePlan, counting: bool
    ) -> Tensor | None:
        z, _, std = self.sae._standardise(flat)
        # As on the sparse path: only tokens where a concept latent may clear its threshold
        # pay for the full encode.
        sel = F.relu((z - w.b_dec) @ plan.gate_encoder_rows.T + plan.gate_encoder_bias)
        margin = 1e-3 * (plan.gate_threshold.abs() + 1)
        candidates = torch.nonzero((sel > plan.gate_threshold - margin).any(dim=-1)).flatten()
        if len(candidates) == 0:
            return None
        zc = z[candidates] if len(candidates) < len(z) else z
        pre = F.relu(F.linear(zc - w.b_dec, w.encoder, w.encoder_bias))
        kth = pre.topk(self.sae.cfg.k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True)
        acts = pre[:, plan.needed]
        acts = torch.where(acts >= kth.values, acts, torch.zeros_like(acts))
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
        if self.cfg.rule == "project":
            return self._project_delta(flat, zc, std, candidates, acts, w, plan, counting)
        change = new - acts
        edited = (change != 0).any(dim=-1, keepdim=True)
        if not bool(edited.any()):
            return None
        self._count(edited, counting)
        delta = change @ plan.decoder_rows
        if std is not None:
            delta = delta * (std[candidates] + UNIT_NORM_EPS)
        # Tokens with no edit get an exact zero, so their bits survive the addition.
        delta = torch.where(edited, delta, torch.zeros_like(delta))
        full = delta.new_zeros(flat.shape)
        return full.index_copy_(0, candidates, delta)

    def _project_delta(
        self, flat: Tensor, zc: Tensor, std: Tensor | None, candidates: Tensor, acts: Tensor,
        w: _Weights, plan: RulePlan, counting: bool,
    ) -> Tensor | None:  # fmt: skip
        total = torch.zeros(len(candidates), flat.shape[-1], dtype=zc.dtype, device=zc.device)
        edited = torch.zeros(len(candidates), 1, dtype=torch.bool, device=zc.device)
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
        self._count(edited, counting)
        if std is not None:
            total = total * (std[candidates] + UNIT_NORM_EPS)
        total = torch.where(edited, total, torch.zeros_like(total))
        full = total.new_zeros(flat.shape)
        return full.index_copy_(0, candidates, total)
