"""The erasing hook: a forward hook on one block that edits the selected SAE latents of its
output at every step (docs/method.md). The published ``scale`` rule has a sparse path (CPU:
only candidate tokens are encoded) and a sync-free dense path (GPU and ``torch.compile``:
per-step tables indexed by a step tensor); the other rules, with the same two paths, are in
:mod:`.rules`.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from saeuron.erasure.candidates import candidate_tokens, place_candidates, take_candidates
from saeuron.erasure.erase_config import EraseConfig
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.hook_state import (
    EditCounts,
    StepPlan,
    StepTable,
    check_finite_activations,
    timestep_row,
)
from saeuron.erasure.rules import RuleSet, RuleTable
from saeuron.models.denoising import DenoiseState
from saeuron.models.tokens import (
    from_tokens,
    input_tensor,
    output_tensor,
    replace_output,
    site_rows,
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.sae.model import SaeWeights

logger = logging.getLogger(__name__)


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

    The rules beyond ``scale`` are a :class:`RuleSet` it holds (``rules``), on the same two
    paths: a :class:`RulePlan` per step (sparse) or a :class:`RuleTable` of every step (dense).
    """

    def __init__(
        self,
        sae: Sae,
        concepts: list[ConceptFeatures],
        multipliers: dict[str, float],
        cfg: EraseConfig,
        site: str,
        state: DenoiseState,
        handle: EditCounts,
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
        self._rule_tables: dict[tuple[Any, ...], RuleTable | None] = {}
        self.rules = RuleSet(sae, concepts, multipliers, cfg.rule)
        self._no_guidance_logged = False
        self._weights: dict[tuple[torch.device, torch.dtype], SaeWeights] = {}
        self._edited_on_device: dict[torch.device, Tensor] = {}
        self._mapping_logged = False
        self.enabled = True

    def reset_plans(self) -> None:
        """Forget the per-step plans (their scales hold the multipliers)."""
        self._selections.clear()
        self._plans.clear()
        self._tables.clear()
        self._rule_tables.clear()
        self.rules.reset()

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

    def weights(self, device: torch.device, dtype: torch.dtype) -> SaeWeights:
        """The SAE on the activation's device and in its dtype (copied once, then reused):
        the SAE follows the activations, wherever offloading or casting put them."""
        key = (device, dtype)
        if key not in self._weights:
            self._weights[key] = self.sae.cast_weights(device, dtype)
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

    def rule_table(
        self, num_steps: int, device: torch.device, dtype: torch.dtype
    ) -> RuleTable | None:
        """Every step's plan of the rule beyond ``scale`` for a ``num_steps`` schedule, for
        the dense path."""
        key = (num_steps, device, dtype)
        if key not in self._rule_tables:
            active = [self.cfg.edits_step(s, num_steps) for s in range(num_steps)]
            rows = [self._rows_for_step(s, num_steps) for s in range(num_steps)]
            self._rule_tables[key] = self.rules.table(rows, active, self.weights(device, dtype))
        return self._rule_tables[key]

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
                elif state.in_loop:
                    self.rule_table(state.num_steps, sample.device, dtype)

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
        dense = self._dense(out)
        if self.cfg.rule != "scale":
            return self._rules(module, args, kwargs, output, out, dtype, counting,
                               dense and state.in_loop)  # fmt: skip
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
            plan = self._plan_for(self._current_rows(state), out.device, dtype)
            if plan is not None:
                selection = (plan.indices, plan.scale, plan.threshold)
        if selection is None and exact:
            return None
        picked = self._site(module, out, args, kwargs, dtype)
        if picked is None:
            return None
        site, rows_, tokens, flat = picked
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
        return self._add_delta(module, output, out, site, rows_, tokens, delta, counting)

    def _current_rows(self, state: DenoiseState) -> tuple[int, ...]:
        """Each concept's statistics row for this call: by step in a loop, else by timestep."""
        if state.in_loop:
            return self._rows_for_step(state.step, state.num_steps)
        return self._rows_for_timestep(state.timestep)

    def _add_delta(
        self,
        module: nn.Module,
        output: Any,
        out: Tensor,
        site: Tensor,
        rows: slice,
        tokens: Tensor,
        delta: Tensor,
        counting: bool,
    ) -> Any:
        """The block's output with the token edit ``delta`` added to its edited rows."""
        delta = from_tokens(delta.to(out.dtype).reshape(tokens.shape), site)
        new = out.clone()
        new[rows] = new[rows] + delta
        if counting:
            check_finite_activations(new, self.handle, self.state.step, "edit")
        return replace_output(module, output, new)

    def _in_window(self, state: DenoiseState) -> bool:
        if state.in_loop:
            return self.cfg.edits_step(state.step, state.num_steps)
        return self.cfg.edits_timestep(state.timestep, self.train_timesteps)

    def _site(
        self, module: nn.Module, out: Tensor, args: tuple[Any, ...], kwargs: dict[str, Any],
        dtype: torch.dtype,
    ) -> tuple[Tensor, slice, Tensor, Tensor] | None:  # fmt: skip
        """What the SAE reads, the rows of the block output the edit is added to, and the
        site as tokens: ``[..., tokens, d]`` and flattened to ``[N, d]`` in ``dtype``."""
        inp = input_tensor(module, args, kwargs) if self.site == "update" else None
        picked = site_rows(out, inp, self.site, self.state.guidance, self.cfg.guidance_half)
        if picked is None:
            if not self._no_guidance_logged:
                # The guidance site without a CFG batch: no unconditional row to compare with.
                logger.warning("activation_site 'guidance' needs CFG; nothing is edited")
                self._no_guidance_logged = True
            return None
        site, rows_ = picked
        tokens = to_tokens(site)
        return site, rows_, tokens, tokens.reshape(-1, tokens.shape[-1]).to(dtype)

    # -- the rules beyond the published one -------------------------------------------------

    def _rules(
        self,
        module: nn.Module,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        output: Any,
        out: Tensor,
        dtype: torch.dtype,
        counting: bool,
        dense: bool,
    ) -> Any:
        """The rule's edit of this call: dense, read from the step table (no Python branch
        on the step or the data, so a compiled graph serves every step), or sparse, from
        this step's plan."""
        state = self.state
        w = self.weights(out.device, dtype)
        if dense:
            table = self.rule_table(state.num_steps, out.device, dtype)
            if table is None:
                return None
        else:
            if not self._in_window(state):
                return None
            plan = self.rules.plan(self._current_rows(state), w)
            if plan is None:
                return None
        picked = self._site(module, out, args, kwargs, dtype)
        if picked is None:
            return None
        site, rows_, tokens, flat = picked
        if dense:
            edit = self.rules.dense_edit(flat, w, table, state.step_tensor.to(out.device))
        else:
            edit = self.rules.edit(flat, w, plan)
            if edit is None:
                return None
        self._count(edit.edited, counting)
        return self._add_delta(module, output, out, site, rows_, tokens, edit.delta, counting)

    # -- the edits ----------------------------------------------------------------------------

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

    @staticmethod
    def _scale_change(acts: Tensor, scale: Tensor, threshold: Tensor) -> tuple[Tensor, Tensor]:
        """The published edit of the selected latents' TopK activations: the edit mask
        (``a > threshold``) and the change ``a' - a = (gamma * mu - 1) a`` where it holds."""
        edit = acts > threshold
        return edit, torch.where(edit, (scale - 1) * acts, torch.zeros_like(acts))

    def _sparse_delta(
        self, flat: Tensor, w: SaeWeights, plan: StepPlan, counting: bool
    ) -> Tensor | None:
        sae = self.sae
        z, _, std = sae.standardise(flat)
        candidates = candidate_tokens(z, w, plan.encoder_rows, plan.encoder_bias, plan.threshold)
        if len(candidates) == 0:
            return None
        acts = sae.topk_acts(sae.pre_acts(take_candidates(z, candidates), w), plan.indices)
        edit, change = self._scale_change(acts, plan.scale, plan.threshold)
        if not bool(edit.any()):
            return None
        self._count(edit, counting)
        delta = sae.unstandardise_delta(
            change @ plan.decoder_rows, None if std is None else std[candidates]
        )
        return place_candidates(delta, edit.any(dim=-1, keepdim=True), candidates, flat.shape)

    def _dense_delta(
        self,
        flat: Tensor,
        w: SaeWeights,
        indices: Tensor,
        scale: Tensor,
        threshold: Tensor,
        counting: bool,
    ) -> Tensor:
        sae = self.sae
        z, _, std = sae.standardise(flat)
        acts = sae.topk_acts(sae.pre_acts(z, w), indices)
        edit, change = self._scale_change(acts, scale, threshold)
        self._count(edit, counting)
        delta = sae.unstandardise_delta(change @ w.decoder.index_select(0, indices), std)
        return torch.where(edit.any(dim=-1, keepdim=True), delta, torch.zeros_like(delta))

    def _paper_output(
        self,
        flat: Tensor,
        w: SaeWeights,
        selected: tuple[Tensor, Tensor, Tensor] | None,
        counting: bool,
    ) -> Tensor:
        sae = self.sae
        z, mean, std = sae.standardise(flat)
        dense = sae.densify(sae.select_topk(sae.pre_acts(z, w)))
        x_hat = sae.decode_dense(dense, w)
        x_hat_edited = x_hat
        if selected is not None:
            indices, scale, threshold = selected
            edit, change = self._scale_change(dense.index_select(1, indices), scale, threshold)
            self._count(edit, counting)
            # a' W_dec = a W_dec + (a' - a) W_dec: the same decode, without writing into
            # the code (padded table entries would write twice into latent 0).
            x_hat_edited = x_hat + change @ w.decoder.index_select(0, indices)
        x_hat = sae.unstandardise(x_hat, mean, std)
        x_hat_edited = sae.unstandardise(x_hat_edited, mean, std)
        # The published form: its "error" has the wrong sign, kept on purpose for comparison.
        return x_hat_edited + (x_hat - flat)
