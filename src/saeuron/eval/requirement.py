"""What a metric or detector needs beyond the technique, and the error when it can't be had."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Requirement:
    what: str
    available: bool
    detail: str = ""


class MetricError(RuntimeError):
    """A metric cannot produce an honest value (a detector failed, a model is missing)."""
