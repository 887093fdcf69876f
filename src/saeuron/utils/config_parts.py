"""The config keys many commands share, each declared once.

A command's config nests the parts it needs with ``flatten=True`` (their keys stay at its
own level in JSON and on the command line), sets its defaults with the instance it nests and
says what a key means for it with ``describe``::

    output: Output = field(Output(out="demo.png"), flatten=True, help="where it goes",
                           describe={"out": "before/after grid image (.png)"})
    batches: BatchSize = field(BatchSize(batch_size=50), flatten=True, help="batches",
                               describe={"batch_size": "images per pipeline call"},
                               limits={"batch_size": {"le": 4096}})

A key with the same name means the same thing everywhere; where a command needs tighter
bounds, it says so with ``limits={"batch_size": {"le": 4096}}``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.device_names import check_device

MAX_SEED = 2**63 - 1
"""The largest seed a ``torch.Generator`` takes."""


class KeepsObjects(Config):
    """A part whose key may also hold an object given from Python (a resolved model or SAE,
    a pipeline): kept as given, for the config to take without looking it up again, where a
    name would be checked as the part declares."""

    def replace(self, **changes: Any) -> Any:
        if any(v is not None and not isinstance(v, (str, Path)) for v in changes.values()):
            return dataclasses.replace(self, **changes)
        return super().replace(**changes)


@dataclass
class Device(Config):
    device: str | None = field(None, help="cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU")

    def __post_init__(self) -> None:
        check_device("device", self.device)


@dataclass
class Seed(Config):
    seed: int = field(0, ge=0, le=MAX_SEED, help="random seed")


@dataclass
class Output(Config):
    out: str | None = field(None, help="where the results are written")

    def require(self) -> str:
        """``out`` for a command that cannot run without it."""
        if not self.out:
            raise ConfigError("out", "required")
        return self.out


@dataclass
class Workdir(Config):
    workdir: str | None = field(
        None, help="where intermediate files go; default: a temporary folder"
    )


@dataclass
class ModelName(Config):
    model: str | None = field(
        None, help="diffusion model: a bundled name (minicanvas), tiny-sd, a folder or a hub id"
    )


@dataclass
class BatchSize(Config):
    batch_size: int = field(4, ge=1, le=2**24, help="items per batch")


MAX_LIMIT = 1_000_000
"""The most prompts a metric reads."""


@dataclass
class Limit(Config):
    limit: int | None = field(None, ge=1, help="at most this many prompts")


@dataclass
class Quick(Config):
    quick: bool = field(False, help="a small, fast run for a smoke test")


@dataclass
class InferenceSteps(Config):
    num_inference_steps: int | None = field(None, help="denoising steps; default: the model's")


@dataclass
class GuidanceScale(Config):
    guidance_scale: float | None = field(
        None, help="classifier-free guidance scale; default: the model's"
    )


@dataclass
class LearningRate(Config):
    lr: float | None = field(None, gt=0, help="learning rate")


@dataclass
class Concept(Config):
    concept: str | None = field(None, help="the concept erased")
