"""The metrics of ``saeuron eval``, one module each, registered by name in :data:`METRICS`."""

from __future__ import annotations

from saeuron.eval.metrics import (  # noqa: F401  (registration)
    asr_i2p,
    asr_mma_diffusion,
    asr_p4d,
    asr_ring_a_bell,
    clip_score,
    err,
    fid,
    preservation,
    tifa,
    ua_ira,
    unlearncanvas,
    unlearndiffatk,
)
from saeuron.eval.metrics.base import METRICS, Item, Metric, MetricError, Requirement

__all__ = ["METRICS", "Item", "Metric", "MetricError", "Requirement"]
