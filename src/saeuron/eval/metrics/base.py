"""The contract every metric of ``saeuron eval`` follows, and their registry.

A metric is split so that the runner can resume and report uncertainty without knowing it:

- ``items()`` lists the images it needs (prompt, seed, group, metadata) without loading
  anything; the runner samples them (and, for ``needs_unerased``, the same prompt and seed
  without the erasure) and stores them on disk;
- ``score(images, items, unerased)`` turns images into one row of numbers and labels per
  image: the per-image table;
- ``summarize(rows)`` computes the reported values from those rows only, so a bootstrap over
  rows gives each value's confidence interval.

``requirements()`` says what the metric needs beyond the technique (weights, files, extras),
for ``--check``, without loading it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Any, ClassVar

from saeuron.eval.requirement import MetricError, Requirement
from saeuron.utils.config import Config
from saeuron.utils.registry import Registry

__all__ = ["METRICS", "Item", "Metric", "MetricError", "Requirement", "mean_of", "register"]


@dataclass(frozen=True)
class Item:
    """One image a metric needs."""

    prompt: str
    seed: int
    group: str = "all"
    """Rows are resampled within their group by the bootstrap (e.g. target / retain)."""
    meta: dict[str, Any] = dc_field(default_factory=dict)


class Metric:
    name: ClassVar[str]
    Config: ClassVar[type[Config]]
    higher_is_better: ClassVar[dict[str, bool]]
    """Every value ``summarize`` reports, and which direction is better."""
    needs_unerased: ClassVar[bool] = False
    concept_field: ClassVar[str | None] = None
    """Config field that defaults to the technique's ``erase_concept``."""
    model_field: ClassVar[str | None] = None
    """Config field that is filled with the technique's ``model``."""
    attacks: ClassVar[bool] = False
    """True for metrics that search adversarial prompts against the technique first: the
    runner calls ``attack(pipeline, folder, seed)`` before ``items``."""
    bootstrap: ClassVar[bool] = True
    """False where a value needs every image at once (FID): no interval then."""
    help: ClassVar[str] = ""

    def __init__(self, config: Config):
        self.config = config

    @classmethod
    def technique_settings(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Technique settings this metric's ``config`` requires (e.g. a published protocol's
        steps and CFG): filled in where the technique config leaves them out, an error where
        it contradicts them. Keys the technique does not have are ignored."""
        return {}

    def requirements(self) -> list[Requirement]:
        return []

    def prepare(self) -> None:
        """Load what scoring needs, before any image is sampled for it; raise
        :class:`MetricError` when it cannot be had (the metric is then skipped, named)."""

    def items(self, seed: int) -> list[Item]:
        raise NotImplementedError

    def planned_images(self, seed: int) -> int:
        """How many images the run will sample for this metric (for ``--check``)."""
        return len(self.items(seed)) * (2 if self.needs_unerased else 1)

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        raise NotImplementedError

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        raise NotImplementedError

    def degenerate_scores(self, row: dict[str, Any]) -> dict[str, Any]:
        """The scores of an image with no picture in it (black, one flat colour), which the
        runner puts in place of what ``score`` said: the technique's failure, never an
        erasure. The default changes nothing, for metrics whose scores already rate such an
        image badly (similarity, CLIP score, FID)."""
        return {}

    def details(self) -> dict[str, Any]:
        """What the report keeps beside the values (an attack's budget and settings)."""
        return {}


METRICS: Registry[type[Metric]] = Registry("metric")


def register(cls: type[Metric]) -> type[Metric]:
    return METRICS.register(cls.name)(cls)


def mean_of(rows: Sequence[dict[str, Any]], key: str, group: str | None = None) -> float:
    """Mean of ``key`` over the rows (of one group); NaN where there is none."""
    values = [float(r[key]) for r in rows if group is None or r["group"] == group]
    return sum(values) / len(values) if values else float("nan")
