"""The sparse path's shortcut, shared by the ``scale`` rule's sparse path and the other rules:
a few encoder rows find the tokens where a selected latent may clear its threshold, and only
those tokens pay for the full encode (20k latents, to know whether they made the top k)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saeuron.sae.model import SaeWeights

CANDIDATE_MARGIN = 1e-3
"""Slack below a latent's threshold, relative to ``|threshold| + 1``, for the activations
read from a row subset: they round differently from the full matmul, and the margin keeps
every token the full encode would edit among the candidates."""


def candidate_tokens(
    z: Tensor, weights: SaeWeights, encoder_rows: Tensor, encoder_bias: Tensor, threshold: Tensor
) -> Tensor:
    """Indices of the tokens of the standardised ``z`` where a latent with these encoder
    rows may clear its ``threshold``. Reading how many there are syncs with the device."""
    sel = F.relu((z - weights.b_dec) @ encoder_rows.T + encoder_bias)
    margin = CANDIDATE_MARGIN * (threshold.abs() + 1)
    return torch.nonzero((sel > threshold - margin).any(dim=-1)).flatten()


def take_candidates(z: Tensor, candidates: Tensor) -> Tensor:
    """The candidate tokens' rows (``z`` itself, uncopied, where every token is one)."""
    return z[candidates] if len(candidates) < len(z) else z


def place_candidates(
    delta: Tensor, edited: Tensor, candidates: Tensor, shape: torch.Size
) -> Tensor:
    """The candidates' ``delta`` written into a zero delta of ``shape`` (every token). Tokens
    with no edit (``edited`` false, ``[candidates, 1]``) get an exact zero, so their bits
    survive the addition."""
    delta = torch.where(edited, delta, torch.zeros_like(delta))
    full = delta.new_zeros(shape)
    return full.index_copy_(0, candidates, delta)
