"""``saeuron bench perf``: what erasing costs, measured side by side in one run.

Each benchmark is a module of this package registered in :data:`BENCHMARKS`; it returns
:class:`Row` objects, one per measured ratio, and the runner prints them as one table with
the command that reproduces each. Baselines (the published code's dense edit, the published
feature procedure, eai-sparsify's trainer) are measured in the same process and run, so a
ratio compares like with like on whatever machine runs it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from saeuron.utils.registry import Registry


@dataclass
class Row:
    """One measured comparison: ours / baseline (or a plain measurement when no baseline)."""

    benchmark: str
    what: str
    ours: float
    baseline: float | None
    unit: str
    target: str
    """The issue's target, e.g. '<= 1.02x'; empty when the row only reports a number."""
    met: bool | None
    command: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.ours / self.baseline

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


def reproduce(name: str, quick: bool = False, device: str = "cpu") -> str:
    """The command that reruns benchmark ``name`` as it was run."""
    parts = [f"saeuron bench perf --only {name}"]
    if quick:
        parts.append("--quick")
    if device != "cpu":
        parts.append(f"--device {device}")
    return " ".join(parts)


class Benchmark(Protocol):
    def __call__(self, quick: bool, device: str) -> list[Row]: ...


BENCHMARKS: Registry[Benchmark] = Registry("benchmark")
