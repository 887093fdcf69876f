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

Every metric config derives :class:`MetricConfig`, which sends an assignment to a part's key
(a budget filling in a search setting, a detector its default threshold) to the part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from saeuron.utils.config import Config, ConfigError, check_range, field
from saeuron.utils.prompts import read_prompt_rows

__all__ = [
    "ClipModel",
    "Concept",
    "Detector",
    "Iterations",
    "MetricConfig",
    "Optimiser",
    "PromptFiles",
    "PromptsPath",
    "Threshold",
    "require",
]

M = TypeVar("M", bound="MetricConfig")


@dataclass
class MetricConfig(Config):
    """Base of every metric's config: assignments to a nested part's key reach the part, and
    the tighter bounds it sets on a part's key (``limits``) are checked first."""

    @classmethod
    def from_dict(cls: type[M], data: Mapping[str, Any], where: str = "") -> M:
        # A part checks its own bounds before this config checks the tighter ones: FID's
        # limit 0 would be refused as "must be >= 1", though 1 is refused too. Checked here
        # with both first, the message is the one of a key declared with the tighter bounds.
        if isinstance(data, Mapping):
            for name, part in cls._flattened().items():
                limits = cls.__dataclass_fields__[name].metadata.get("limits", {})
                for key, tighter in limits.items():
                    value = data.get(key)
                    # Other types are left to the part, which says what it expects.
                    if isinstance(value, int) and not isinstance(value, bool):
                        own = part.__dataclass_fields__[key].metadata.get("bounds", {})
                        check_range(key, value, **{**own, **tighter})
        return super().from_dict(data, where)

    def __setattr__(self, name: str, value: Any) -> None:
        # Code outside the config fills keys in after construction (resolve_budget,
        # detector_settings). An attribute of the same name on this config would hide the
        # part's value from reads here, while to_dict() (the report, attack.json) would
        # still read the part's unset one.
        if name not in self.__dataclass_fields__:
            for part in type(self)._flattened():
                nested = self.__dict__.get(part)
                if nested is not None and name in nested.config_keys():
                    setattr(nested, name, value)
                    return
        super().__setattr__(name, value)


def require(config: Config, *keys: str, message: str = "must not be null") -> None:
    """Refuse ``None`` for keys a metric cannot do without (a part lets them be unset)."""
    for key in keys:
        if config.value(key) is None:
            raise ConfigError(key, message)


@dataclass
class Concept(Config):
    concept: str | None = field(None, help="the erased concept; default: the technique's")


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

    lr: float | None = field(None, gt=0, le=10, help="learning rate of the learned prompt")
    weight_decay: float | None = field(None, ge=0, le=10, help="weight decay")
