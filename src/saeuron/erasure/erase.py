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
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeuron.erasure.features import ConceptFeatures
from saeuron.models.denoising import DenoiseState, DenoiseTracker
from saeuron.models.hookpoints import resolve_module
from saeuron.models.tokens import (
    ACTIVATION_SITES,
    CFG_HALVES,
    GUIDANCE_SITE,
    from_tokens,
    input_tensor,
    output_tensor,
    replace_output,
    site_rows,
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.errors import DegenerateOutputError
from saeuron.utils.numerics import count_non_finite

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

Only ``scale`` has the dense (compile-friendly) path; the others run eagerly.
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
        if self.activation_site == GUIDANCE_SITE and self.cfg_half != "cond":
            raise ConfigError(
                "cfg_half", "activation_site 'guidance' edits the conditional rows; use 'cond'"
            )
        if self.rule != "scale" and self.error_term != "exact":
            raise ConfigError(
                "error_term",
                f"rule {self.rule!r} needs error_term='exact' (the published error term "
                "belongs to the published rule)",
            )
        if self.window is not None:
            window = [float(v) for v in self.window]
            if len(window) != 2 or not all(math.isfinite(v) for v in window) or not (
                0.0 <= window[0] <= window[1] <= 1.0
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


class StepPlan(NamedTuple):
    indices: Tensor
    scale: Tensor
    threshold: Tensor
    decoder_rows: Tensor
    encoder_rows: Tensor
    """The selected latents' encoder rows: their activations without the full encode."""
    encoder_bias: Tensor


class StepTable(NamedTuple):
    """Every step's selection as ``[steps, m]`` tensors, looked up by a step tensor.

    Steps with fewer than ``m`` latents are padded with latent 0 at scale 1 and threshold
    +inf: a pad never edits, so a step's row can be taken without knowing its length. Steps
    outside the window are all pads, and ``active`` is false there (the paper error term,
    which changes a token even without an edit, reads it).
    """

    indices: Tensor
    scale: Tensor
    threshold: Tensor
    active: Tensor
    """``[steps]`` bool: the window lets the hook edit this step."""


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


class _Weights(NamedTuple):
    """The SAE's tensors on one device in one dtype (the activation's)."""

    encoder: Tensor
    encoder_bias: Tensor
    b_dec: Tensor
    decoder: Tensor


@dataclass
class EraseHandle:
    """What an :class:`Eraser` did so far: its hook's calls and the tokens it edited.

    Calls traced by ``torch.compile`` are not counted (a Python counter inside a compiled
    graph would recompile it at every call).
    """

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


def timestep_row(concept: ConceptFeatures, timestep: float, train_timesteps: int) -> int:
    """The row of ``concept`` for a denoiser call outside a sampling loop at ``timestep``.

    The row whose recorded timestep is nearest; without recorded timesteps, the rows are
    taken to span the training range evenly, from the noisiest.
    """
    if concept.num_steps == 1 or not math.isfinite(timestep):
        return 0
    recorded = concept.timesteps
    if recorded is not None and recorded.numel() == concept.num_steps:
        return int((recorded.float() - timestep).abs().argmin())
    span = max(train_timesteps - 1, 1)
    position = (1.0 - min(max(timestep, 0.0), span) / span) * (concept.num_steps - 1)
    return int(round(position))


class _EraseHook:
    """The forward hook on the erased block.

    Two ways to the same edit (docs/method.md, section 5):

    - ``sparse`` (the CPU's): the selected latents' encoder rows find the candidate tokens,
      and only those pay the full encode. Finding them (``nonzero``) and skipping a step
      with no candidate ask the device how many there are: a host sync on a GPU, a graph
      break under ``torch.compile``.
    - ``dense`` (chosen on GPUs and while compiling): every token is encoded and the edit is
      a mask, so the shapes never depend on the data; the step's latents are looked up in a
      :class:`StepTable` with the tracker's step tensor, so a new step is a new index, not a
      new graph.
    """

    def __init__(
        self,
        sae: Sae,
        concepts: list[ConceptFeatures],
        multipliers: dict[str, float],
        cfg: EraseConfig,
        site: str,
        state: DenoiseState,
        handle: EraseHandle,
        train_timesteps: int = 1000,
    ):
        self.sae = sae
        self.concepts = concepts
        self.multipliers = multipliers
        self.cfg = cfg
        self.site = site
        self.state = state
        self.handle = handle
        self.train_timesteps = train_timesteps
        self._selections: dict[tuple[int, ...], tuple[Tensor, Tensor, Tensor] | None] = {}
        self._plans: dict[tuple[Any, ...], StepPlan | None] = {}
        self._tables: dict[tuple[Any, ...], StepTable | None] = {}
        self._rule_plans: dict[tuple[Any, ...], RulePlan | None] = {}
        self._no_cfg_logged = False
        self._weights: dict[tuple[torch.device, torch.dtype], _Weights] = {}
        self._edited_on_device: dict[torch.device, Tensor] = {}
        self._mapping_logged = False
        self.enabled = True

    def reset_plans(self) -> None:
        """Forget the per-step plans (their scales hold the multipliers)."""
        self._selections.clear()
        self._plans.clear()
        self._tables.clear()
        self._rule_plans.clear()

    @property
    def edited_tokens(self) -> int:
        """Tokens edited so far; reading the device counters waits for the device."""
        return self.handle.edited_tokens + sum(int(c) for c in self._edited_on_device.values())

    # -- what to edit ---------------------------------------------------------------------

    def _rows_for_step(self, step: int, num_steps: int) -> tuple[int, ...]:
        rows = []
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
            rows.append(concept.stats_step(step, num_steps))
        return tuple(rows)

    def _rows_for_timestep(self, timestep: float) -> tuple[int, ...]:
        return tuple(timestep_row(c, timestep, self.train_timesteps) for c in self.concepts)

    def _select(self, rows: tuple[int, ...]) -> tuple[Tensor, Tensor, Tensor] | None:
        """Latents, scales and thresholds (on the host) of the concepts' given rows."""
        if rows in self._selections:
            return self._selections[rows]
        indices, scales, thresholds = [], [], []
        for concept, row in zip(self.concepts, rows):
            idx, mean, thr = concept.at(row)
            indices.append(idx)
            scales.append(self.multipliers[concept.concept] * mean)
            thresholds.append(thr)
        selection = None
        if indices and sum(len(i) for i in indices) > 0:
            idx, scale, thr = torch.cat(indices), torch.cat(scales), torch.cat(thresholds)
            # A latent chosen by several concepts is edited once, by the strongest edit
            # (largest |gamma * mu|) with that concept's threshold: stacking edits would
            # compound scales.
            order = torch.argsort(-scale.abs(), stable=True)
            seen: set[int] = set()
            keep = []
            for position in order.tolist():
                latent = int(idx[position])
                if latent not in seen:
                    seen.add(latent)
                    keep.append(position)
            keep_t = torch.tensor(sorted(keep), dtype=torch.long)
            selection = (idx[keep_t], scale[keep_t], thr[keep_t])
        self._selections[rows] = selection
        return selection

    def weights(self, device: torch.device, dtype: torch.dtype) -> _Weights:
        """The SAE on the activation's device and in its dtype (copied once, then reused):
        the SAE follows the activations, wherever offloading or casting put them."""
        key = (device, dtype)
        if key not in self._weights:
            sae = self.sae
            cast = lambda t: t.detach().to(device=device, dtype=dtype)  # noqa: E731
            self._weights[key] = _Weights(
                cast(sae.encoder.weight), cast(sae.encoder.bias), cast(sae.b_dec), cast(sae.W_dec)
            )
        return self._weights[key]

    def _plan_for(
        self, rows: tuple[int, ...], device: torch.device, dtype: torch.dtype
    ) -> StepPlan | None:
        key = (rows, device, dtype)
        if key not in self._plans:
            selection = self._select(rows)
            plan = None
            if selection is not None:
                idx, scale, thr = selection
                w = self.weights(device, dtype)
                idx = idx.to(device)
                plan = StepPlan(
                    indices=idx,
                    scale=scale.to(device, dtype),
                    threshold=thr.to(device, dtype),
                    decoder_rows=w.decoder[idx],
                    encoder_rows=w.encoder[idx],
                    encoder_bias=w.encoder_bias[idx],
                )
            self._plans[key] = plan
        return self._plans[key]

    def plan(
        self,
        step: int,
        num_steps: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> StepPlan | None:
        """The edit at ``step`` of ``num_steps`` (on the SAE's device and dtype by default)."""
        return self._plan_for(
            self._rows_for_step(step, num_steps), device or self.sae.device, dtype or self.sae.dtype
        )

    def table(self, num_steps: int, device: torch.device, dtype: torch.dtype) -> StepTable | None:
        """Every step's edit of a ``num_steps`` schedule, for the dense path."""
        key = (num_steps, device, dtype)
        if key not in self._tables:
            active = [self.cfg.edits_step(s, num_steps) for s in range(num_steps)]
            # A step outside the window gets no selection: its row is all pads.
            selections = [
                self._select(self._rows_for_step(s, num_steps)) if active[s] else None
                for s in range(num_steps)
            ]
            width = max((len(sel[0]) for sel in selections if sel is not None), default=0)
            table = None
            if width:
                indices = torch.zeros(num_steps, width, dtype=torch.long)
                scale = torch.ones(num_steps, width)
                threshold = torch.full((num_steps, width), float("inf"))
                for s, sel in enumerate(selections):
                    if sel is not None:
                        n = len(sel[0])
                        indices[s, :n], scale[s, :n], threshold[s, :n] = sel
                table = StepTable(
                    indices.to(device),
                    scale.to(device, dtype),
                    threshold.to(device, dtype),
                    torch.tensor(active, device=device),
                )
            self._tables[key] = table
        return self._tables[key]

    def prepare(
        self, state: DenoiseState, sample: Tensor | None, dtypes: tuple[torch.dtype, ...] = ()
    ) -> None:
        """Called by the tracker before each denoiser call, outside any compiled graph: builds
        what the dense path reads (the SAE on the input's device in the block's dtypes, the
        step table), so compiled code finds it and only reads it."""
        if sample is None or not self.enabled:
            return
        for dtype in {sample.dtype, *dtypes}:
            if dtype.is_floating_point:
                self.weights(sample.device, dtype)
                if state.in_loop and self.cfg.rule == "scale":
                    self.table(state.num_steps, sample.device, dtype)

    def _dense(self, x: Tensor) -> bool:
        if self.cfg.edit_path != "auto":
            return self.cfg.edit_path == "dense"
        return x.device.type != "cpu" or torch.compiler.is_compiling()

    # -- the hook -------------------------------------------------------------------------

    # Not under no_grad: sampling already runs without gradients, and white-box attacks
    # (P4D) differentiate through the edited UNet.
    def __call__(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
    ) -> Any:
        counting = not torch.compiler.is_compiling()
        if counting:
            self.handle.calls += 1
        if not self.enabled:
            return None
        state = self.state
        out = output_tensor(module, output)
        if counting:
            # One read of the device a call; skipped inside a compiled graph.
            check_finite_activations(out, self.handle, state.step, "model")
        dtype = out.dtype if out.dtype.is_floating_point else self.sae.dtype
        if self.cfg.rule != "scale":
            return self._apply_rule(module, args, kwargs, output, out, dtype, counting)
        dense = self._dense(out)
        exact = self.cfg.error_term == "exact"
        plan: StepPlan | None = None
        selection: tuple[Tensor, Tensor, Tensor] | None = None
        active: Tensor | None = None
        if dense and state.in_loop:
            # The window is in the table (steps outside it are all pads): no Python branch
            # on the step, so a compiled graph serves every step.
            table = self.table(state.num_steps, out.device, dtype)
            if table is not None:
                step = state.step_tensor.to(out.device)
                selection = (
                    table.indices.index_select(0, step).squeeze(0),
                    table.scale.index_select(0, step).squeeze(0),
                    table.threshold.index_select(0, step).squeeze(0),
                )
                active = table.active.index_select(0, step)
        else:
            if not self._in_window(state):
                return None
            rows = (
                self._rows_for_step(state.step, state.num_steps)
                if state.in_loop
                else self._rows_for_timestep(state.timestep)
            )
            plan = self._plan_for(rows, out.device, dtype)
            if plan is not None:
                selection = (plan.indices, plan.scale, plan.threshold)
        if selection is None and exact:
            return None
        picked = self._site(module, out, args, kwargs)
        if picked is None:
            return None
        site, rows_ = picked
        tokens = to_tokens(site)
        flat = tokens.reshape(-1, tokens.shape[-1]).to(dtype)
        w = self.weights(out.device, dtype)
        if not exact:
            delta = self._paper_output(flat, w, selection, counting) - flat
            if active is not None:
                # Outside the window the published form is not applied either.
                delta = torch.where(active, delta, torch.zeros_like(delta))
        elif dense:
            assert selection is not None
            delta = self._dense_delta(flat, w, *selection, counting)
        else:
            assert plan is not None
            sparse = self._sparse_delta(flat, w, plan, counting)
            if sparse is None:
                return None
            delta = sparse
        delta = from_tokens(delta.to(out.dtype).reshape(tokens.shape), site)
        new = out.clone()
        new[rows_] = new[rows_] + delta
        if counting:
            check_finite_activations(new, self.handle, state.step, "edit")
        return replace_output(module, output, new)

    def _in_window(self, state: DenoiseState) -> bool:
        if state.in_loop:
            return self.cfg.edits_step(state.step, state.num_steps)
        return self.cfg.edits_timestep(state.timestep, self.train_timesteps)

    def _site(
        self, module: nn.Module, out: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Tensor, slice] | None:
        """What the SAE reads, and the rows of the block output the edit is added to."""
        inp = input_tensor(module, args, kwargs) if self.site == "update" else None
        picked = site_rows(out, inp, self.site, self.state.cfg, self.cfg.cfg_half)
        if picked is None and not self._no_cfg_logged:
            # The guidance site without a CFG batch: no unconditional row to compare with.
            logger.warning("activation_site 'guidance' needs CFG; nothing is edited")
            self._no_cfg_logged = True
        return picked

    # -- the rules beyond the published one (eager) -----------------------------------------

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
        rows = (
            self._rows_for_step(state.step, state.num_steps)
            if state.in_loop
            else self._rows_for_timestep(state.timestep)
        )
        plan = self.rule_plan(rows, out.device, dtype)
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
        delta = from_tokens(delta.to(out.dtype).reshape(tokens.shape), site)
        new = out.clone()
        new[rows_] = new[rows_] + delta
        if counting:
            check_finite_activations(new, self.handle, state.step, "edit")
        return replace_output(module, output, new)

    def _rule_delta(
        self, flat: Tensor, w: _Weights, plan: RulePlan, counting: bool
    ) -> Tensor | None:
        z, _, std = self._standardise(flat)
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
            new[:, c.cols] = torch.where(
                hit, c.retain + c.gamma * (own - c.retain), new[:, c.cols]
            )
            if len(c.anchor_cols):
                gate = hit.any(dim=-1, keepdim=True)
                strength = (own * c.mean).sum(-1, keepdim=True) / (c.mean * c.mean).sum().clamp_min(
                    torch.finfo(c.mean.dtype).tiny
                )
                # Pulled in as hard as the concept is pushed out: gain 1 at gamma 0 (a plain
                # swap), 1 - gamma when gamma overshoots.
                target = (1.0 - min(c.gamma, 0.0)) * strength.clamp_min(0) * c.anchor_mean
                current = new[:, c.anchor_cols]
                new[:, c.anchor_cols] = torch.where(
                    gate, torch.maximum(current, target), current
                )
        if self.cfg.rule == "project":
            return self._project_delta(flat, zc, std, candidates, acts, w, plan, counting)
        change = new - acts
        edited = (change != 0).any(dim=-1, keepdim=True)
        if not bool(edited.any()):
            return None
        self._count(edited, counting)
        delta = change @ plan.decoder_rows
        if std is not None:
            delta = delta * (std[candidates] + 1e-5)
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
            total = total * (std[candidates] + 1e-5)
        total = torch.where(edited, total, torch.zeros_like(total))
        full = total.new_zeros(flat.shape)
        return full.index_copy_(0, candidates, total)

    def _standardise(self, flat: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        if not self.sae.cfg.input_unit_norm:
            return flat, None, None
        mean = flat.mean(dim=-1, keepdim=True)
        x = flat - mean
        std = x.std(dim=-1, keepdim=True)
        return x / (std + 1e-5), mean, std

    def _count(self, edit: Tensor, counting: bool) -> None:
        if not counting:
            return
        edited = edit.any(dim=-1).sum()
        if edited.device.type == "cpu":
            self.handle.edited_tokens += int(edited)
        else:
            # Kept on the device: reading it would wait for the GPU at every call.
            counter = self._edited_on_device.get(edited.device)
            if counter is None:
                self._edited_on_device[edited.device] = edited.clone()
            else:
                counter += edited

    def _sparse_delta(
        self, flat: Tensor, w: _Weights, plan: StepPlan, counting: bool
    ) -> Tensor | None:
        z, _, std = self._standardise(flat)
        k = self.sae.cfg.k
        # Only tokens where a selected latent clears its threshold can be edited. Those
        # latents' activations cost a few encoder rows; the full encode (20k latents, to
        # know whether they made the top k) is paid only for these candidate tokens. The
        # margin absorbs the rounding difference between a row subset and the full matmul,
        # so the candidates always include every token the full encode would edit.
        sel = F.relu((z - w.b_dec) @ plan.encoder_rows.T + plan.encoder_bias)
        margin = 1e-3 * (plan.threshold.abs() + 1)
        candidates = torch.nonzero((sel > plan.threshold - margin).any(dim=-1)).flatten()
        if len(candidates) == 0:
            return None
        zc = z[candidates] if len(candidates) < len(z) else z
        pre = F.relu(F.linear(zc - w.b_dec, w.encoder, w.encoder_bias))
        kth = pre.topk(k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True).values
        # A latent's TopK activation is its pre-activation if it made the top k, else 0.
        acts = pre[:, plan.indices]
        acts = torch.where(acts >= kth, acts, torch.zeros_like(acts))
        edit = acts > plan.threshold
        if not bool(edit.any()):
            return None
        self._count(edit, counting)
        change = torch.where(edit, (plan.scale - 1) * acts, torch.zeros_like(acts))
        delta = change @ plan.decoder_rows
        if std is not None:
            delta = delta * (std[candidates] + 1e-5)
        # Tokens with no edit get an exact zero, so their bits survive the addition.
        delta = torch.where(edit.any(dim=-1, keepdim=True), delta, torch.zeros_like(delta))
        full = delta.new_zeros(flat.shape)
        return full.index_copy_(0, candidates, delta)

    def _edit_of(
        self, z: Tensor, w: _Weights, indices: Tensor, scale: Tensor, threshold: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Every token encoded: (pre-activations, TopK activations of the selected latents,
        the edit mask, the change ``a' - a``)."""
        pre = F.relu(F.linear(z - w.b_dec, w.encoder, w.encoder_bias))
        kth = pre.topk(self.sae.cfg.k, dim=-1, sorted=False).values.min(dim=-1, keepdim=True)
        acts = pre.index_select(1, indices)
        acts = torch.where(acts >= kth.values, acts, torch.zeros_like(acts))
        edit = acts > threshold
        change = torch.where(edit, (scale - 1) * acts, torch.zeros_like(acts))
        return pre, acts, edit, change

    def _dense_delta(
        self,
        flat: Tensor,
        w: _Weights,
        indices: Tensor,
        scale: Tensor,
        threshold: Tensor,
        counting: bool,
    ) -> Tensor:
        z, _, std = self._standardise(flat)
        _, _, edit, change = self._edit_of(z, w, indices, scale, threshold)
        self._count(edit, counting)
        delta = change @ w.decoder.index_select(0, indices)
        if std is not None:
            delta = delta * (std + 1e-5)
        return torch.where(edit.any(dim=-1, keepdim=True), delta, torch.zeros_like(delta))

    def _paper_output(
        self,
        flat: Tensor,
        w: _Weights,
        selected: tuple[Tensor, Tensor, Tensor] | None,
        counting: bool,
    ) -> Tensor:
        z, mean, std = self._standardise(flat)
        pre = F.relu(F.linear(z - w.b_dec, w.encoder, w.encoder_bias))
        top = pre.topk(self.sae.cfg.k, dim=-1, sorted=False)
        dense = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
        x_hat = dense @ w.decoder + w.b_dec
        x_hat_edited = x_hat
        if selected is not None:
            indices, scale, threshold = selected
            acts = dense.index_select(1, indices)
            edit = acts > threshold
            self._count(edit, counting)
            change = torch.where(edit, (scale - 1) * acts, torch.zeros_like(acts))
            # a' W_dec = a W_dec + (a' - a) W_dec: the same decode, without writing into
            # the code (padded table entries would write twice into latent 0).
            x_hat_edited = x_hat + change @ w.decoder.index_select(0, indices)
        if std is not None:
            x_hat = x_hat * (std + 1e-5) + mean
            x_hat_edited = x_hat_edited * (std + 1e-5) + mean
        # The published form: its "error" has the wrong sign, kept on purpose for comparison.
        return x_hat_edited + (x_hat - flat)


def check_finite_activations(tensor: Tensor, handle: EraseHandle, step: int, source: str) -> None:
    """Stop the run where the hooked block's activations hold NaN or inf: sampling would go
    on and return a black image that a detector calls erased. ``source`` says who made them:
    ``"model"`` (before the edit) or ``"edit"`` (after it)."""
    bad = count_non_finite(tensor)
    if not bad:
        return
    where = f"{bad} of {tensor.numel()} activations at {handle.hookpoint} (step {step})"
    if source == "model":
        raise DegenerateOutputError(
            f"{where} were NaN or infinite before any edit: the model itself diverged "
            f"({tensor.dtype}); sample in float32 (use_fp16 false) or check the model"
        )
    raise DegenerateOutputError(
        f"{where} became NaN or infinite through the erasure of {', '.join(handle.concepts)}: "
        f"the edit overflows {tensor.dtype}; use a smaller |multiplier| or float32"
    )


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
        train_timesteps = int(getattr(pipe.scheduler.config, "num_train_timesteps", 1000) or 1000)
        self._hook = _EraseHook(
            sae, concepts, multipliers, cfg, site, self._tracker.state, self.handle, train_timesteps
        )
        block_dtypes = tuple({p.dtype for p in module.parameters()})
        self._tracker.add_listener(
            lambda state, sample: self._hook.prepare(state, sample, block_dtypes)
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
    if cfg.rule == "anchor":
        bare = [c.concept for c in concept_list if c.anchor_indices is None]
        if bare:
            raise ConfigError(
                "rule",
                f"rule 'anchor' needs features with an anchor; {', '.join(map(repr, bare))} "
                "has none (ConceptFeatures.with_anchor adds one)",
            )
    check_same_sae(concept_list, sae)
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
