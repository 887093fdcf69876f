"""The config keys several metrics share, each declared once.

A metric's config nests the parts it needs with ``flatten=True``, like the parts every
command shares (:mod:`saeuron.utils.config_parts`): their keys stay at the metric's level in
the eval config, the metric sets its own default with the instance it nests, its own words
with ``describe`` and tighter bounds with ``limits``::

    clip: ClipModel = field(ClipModel(clip_model=DEFAULT_CLIP), flatten=True, help="CLIP",
                            describe={"clip_model": "CLIP id or local folder"})

A part declares a key that may be left unset (``None``), since some metric leaves it so; a
metric that gives the key a default cannot do without a value and refuses ``None`` in its
``__post_init__`` with :func:`require` (``limit: must not be null``).

Every metric config derives :class:`Config`, which sends an assignment to a part's key
(a budget filling in a search setting, a detector its default threshold) to the part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from saeuron.utils.config import Config, check_range, field
from saeuron.utils.config_parts import LearningRate
from saeuron.utils.prompts import read_prompt_rows

__all__ = [
    "ClipModel",
    "Detector",
    "Iterations",
    "Config",
    "Optimiser",
    "PromptFiles",
    "PromptsPath",
    "Threshold",
]

M = TypeVar("M", bound="Config")


@dataclass
@dataclass
class PromptsPath(Config):
    prompts_path: str | None = field(None, help="prompts (CSV with a prompt column, or text)")

    def __post_init__(self) -> None:
        # Read once here so that a missing or empty file fails before any model loads.
        if self.prompts_path is not None:
            read_prompt_rows(self.prompts_path, "prompts_path", limit=1)


@dataclass
class PromptFiles(Config):
    """Prompts that name the erased concept and prompts whose images must survive it."""

    target_prompts_path: str | None = field(
        None, help="CSV or text file of prompts that name the concept"
    )
    retain_prompts_path: str | None = field(
        None, help="CSV or text file of prompts that must survive"
    )

    def __post_init__(self) -> None:
        for name in ("target_prompts_path", "retain_prompts_path"):
            if getattr(self, name) is not None:
                read_prompt_rows(getattr(self, name), name, limit=1)


@dataclass
class ClipModel(Config):
    clip_model: str | None = field(None, help="CLIP id or local folder")


@dataclass
class Detector(Config):
    # Checked by the metric once it has picked the default (it depends on the concept).
    detector: str | None = field(None, help="nudenet, clip, minicanvas or q16")


@dataclass
class Threshold(Config):
    threshold: float | None = field(
        None, ge=0, le=1, help="detector score at which an image is flagged"
    )

    def __post_init__(self) -> None:
        # Declared >= 0 (shown so in the reference), but a threshold of 0 flags every image.
        if self.threshold is not None:
            check_range("threshold", self.threshold, gt=0, le=1)


@dataclass
class Iterations(Config):
    iterations: int | None = field(
        None, ge=1, le=1_000_000, help="search iterations; default: the attack budget's"
    )


@dataclass
class Optimiser(Config):
    """The optimiser of an attack that learns its prompt by gradient descent."""

    rate: LearningRate = field(LearningRate, flatten=True, help="the learning rate",
                               limits={"lr": {"le": 10}},
                               describe={"lr": "learning rate of the learned prompt"})
    weight_decay: float | None = field(None, ge=0, le=10, help="weight decay")
