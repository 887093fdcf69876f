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
    conditional_rows,
    from_tokens,
    input_tensor,
    output_tensor,
    replace_output,
    to_tokens,
)
from saeuron.sae import Sae
from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.errors import DegenerateOutputError
from saeuron.utils.numerics import count_non_finite

logger = logging.getLogger(__name__)

ERROR_TERMS = ("exact", "paper")
EDIT_PATHS = ("auto", "sparse", "dense")


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


class StepTable(NamedTuple):
    """Every step's selection as ``[steps, m]`` tensors, looked up by a step tensor.

    Steps with fewer than ``m`` latents are padded with latent 0 at scale 1 and threshold
    +inf: a pad never edits, so a step's row can be taken without knowing its length.
    """

    indices: Tensor
    scale: Tensor
    threshold: Tensor


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
        self._weights: dict[tuple[torch.device, torch.dtype], _Weights] = {}
        self._edited_on_device: dict[torch.device, Tensor] = {}
        self._mapping_logged = False
        self.enabled = True

    def reset_plans(self) -> None:
        """Forget the per-step plans (their scales hold the multipliers)."""
        self._selections.clear()
        self._plans.clear()
        self._tables.clear()

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
            selections = [
                self._select(self._rows_for_step(s, num_steps)) for s in range(num_steps)
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
                    indices.to(device), scale.to(device, dtype), threshold.to(device, dtype)
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
                if state.in_loop:
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
        dense = self._dense(out)
        exact = self.cfg.error_term == "exact"
        plan: StepPlan | None = None
        selection: tuple[Tensor, Tensor, Tensor] | None = None
        if dense and state.in_loop:
            table = self.table(state.num_steps, out.device, dtype)
            if table is not None:
                step = state.step_tensor.to(out.device)
                selection = (
                    table.indices.index_select(0, step).squeeze(0),
                    table.scale.index_select(0, step).squeeze(0),
                    table.threshold.index_select(0, step).squeeze(0),
                )
        else:
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
        site = out - input_tensor(module, args, kwargs) if self.site == "update" else out
        rows_ = conditional_rows(out.shape[0], state.cfg, self.cfg.cfg_half)
        tokens = to_tokens(site[rows_])
        flat = tokens.reshape(-1, tokens.shape[-1]).to(dtype)
        w = self.weights(out.device, dtype)
        if not exact:
            delta = self._paper_output(flat, w, selection, counting) - flat
        elif dense:
            assert selection is not None
            delta = self._dense_delta(flat, w, *selection, counting)
        else:
            assert plan is not None
            sparse = self._sparse_delta(flat, w, plan, counting)
            if sparse is None:
                return None
            delta = sparse
        delta = from_tokens(delta.to(out.dtype).reshape(tokens.shape), site[rows_])
        new = out.clone()
        new[rows_] = new[rows_] + delta
        if counting:
            check_finite_activations(new, self.handle, state.step, "edit")
        return replace_output(module, output, new)

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
    edit: ``attach(pipe, sae, cat, multiplier=-20.0)``. ``multiplier`` may also be a mapping
    from concept name to gamma naming every concept. The SAE is not moved: the hook computes
    on the activation's device and in its dtype (a copy per device and dtype, made once), so
    CPU offloading and half precision need nothing more.
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
