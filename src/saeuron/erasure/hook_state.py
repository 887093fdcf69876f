"""What the erasing hook keeps and reports: its per-step plans and tables, the handle counting
calls and edited tokens, and the check that stops a run whose activations are no longer
finite. (The SAE's tensors per device and dtype are :class:`saeuron.sae.model.SaeWeights`.)"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from saeuron.erasure.features import ConceptFeatures
from saeuron.utils.errors import DegenerateOutputError
from saeuron.utils.numerics import count_non_finite

logger = logging.getLogger(__name__)


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


@dataclass
class EditCounts:
    """What an :class:`Erasure` did so far: its hook's calls and the tokens it edited.

    Calls traced by ``torch.compile`` are not counted (a Python counter inside a compiled
    graph would recompile it at every call).
    """

    hookpoint: str
    concepts: list[str]
    calls: int = 0
    edited_tokens: int = 0


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


def check_finite_activations(tensor: Tensor, handle: EditCounts, step: int, source: str) -> None:
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
