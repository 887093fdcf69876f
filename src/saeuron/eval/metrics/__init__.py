"""The metrics of ``saeuron eval``, one module each, registered by name in :data:`METRICS`."""

from __future__ import annotations

from . import asr_i2p, clip_score, err, fid, preservation, tifa, ua_ira, unlearncanvas  # noqa: F401  (registration)
from .base import METRICS, Item, Metric, MetricError, Requirement

__all__ = ["METRICS", "Item", "Metric", "MetricError", "Requirement"]
