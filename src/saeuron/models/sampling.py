"""How a pipeline samples: one config shared by every command that runs the model.

The technique, concept building, activation capture, the evaluation techniques and the
slider all sample with a :class:`SamplingConfig`. Its fields left at ``None`` take the
model's own defaults (a bundle's ``bundle.json``, the table of known models, else Stable
Diffusion's), so MiniCanvas samples at its 20 steps and SD 1.4 at 50 without being told.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import DDIMScheduler

from saeuron.models.defaults import model_defaults
from saeuron.utils.config import Config, ConfigError, field
from saeuron.utils.devices import check_device, resolve_device, sampling_dtype

logger = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "pipeline")
"""``ddim``: DDIM on the model's own noise schedule, as the published SAeUron code samples;
``pipeline``: the scheduler the pipeline ships with (PNDM for SD 1.x, Euler for SDXL, ...)."""

MAX_SIDE = 4096
"""Largest image side accepted (pixels): beyond it a UNet step needs hundreds of GB."""


@dataclass
class SamplingConfig(Config):
    num_inference_steps: int | None = field(
        None, ge=1, le=1000, help="denoising steps; default: the model's (MiniCanvas 20, SD 50)"
    )
    guidance_scale: float | None = field(
        None,
        ge=0,
        le=100,
        help="classifier-free guidance scale (<= 1: no CFG); default: the model's",
    )
    use_fp16: bool = field(
        True, help="half precision where it is fast (CUDA, MPS); the CPU always runs float32"
    )
    device: str | None = field(None, help="cpu, cuda, cuda:N or mps; default: CUDA, MPS, CPU")
    scheduler: str = field(
        "ddim",
        choices=SCHEDULERS,
        help="'ddim': DDIM on the model's own noise schedule (betas, spacing, offset), as the "
        "published SAeUron code samples; 'pipeline': the model's own scheduler (SD 1.x: PNDM, "
        "SDXL: Euler, SDXL-Turbo: Euler ancestral). Flow-matching models keep theirs",
    )
    seed: int = field(0, ge=0, le=2**63 - 1, help="prompt i samples with seed + i")
    batch_size: int = field(4, ge=1, le=4096, help="prompts per pipeline call")
    height: int | None = field(
        None,
        ge=8,
        le=MAX_SIDE,
        help="image height in pixels, a multiple of 8; default: the model's",
    )
    width: int | None = field(
        None, ge=8, le=MAX_SIDE, help="image width in pixels, a multiple of 8; default: the model's"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_device("device", self.device)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ConfigError(name, f"got {value}; must be a positive multiple of 8")

    def resolved(self, model: str | None) -> SamplingConfig:
        """A copy with the model's defaults filled in where this config says ``None``."""
        defaults = model_defaults(model)
        return self.replace(
            num_inference_steps=self.num_inference_steps or defaults.num_inference_steps,
            guidance_scale=(
                self.guidance_scale if self.guidance_scale is not None else defaults.guidance_scale
            ),
        )

    @property
    def steps(self) -> int:
        """Denoising steps of a resolved config."""
        if self.num_inference_steps is None:
            raise RuntimeError("resolve the sampling config against its model first")
        return self.num_inference_steps

    @property
    def guidance(self) -> float:
        if self.guidance_scale is None:
            raise RuntimeError("resolve the sampling config against its model first")
        return self.guidance_scale

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def dtype_for(self, device: torch.device) -> torch.dtype:
        """The compute dtype: fp16 where it is fast and wanted, else fp32."""
        return sampling_dtype(device, self.use_fp16)

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of a pipeline call (steps, guidance, size)."""
        kwargs: dict[str, Any] = {
            "num_inference_steps": self.steps,
            "guidance_scale": self.guidance,
        }
        if self.height is not None:
            kwargs["height"] = self.height
        if self.width is not None:
            kwargs["width"] = self.width
        return kwargs


def seed_generators(seeds: list[int] | range) -> list[torch.Generator]:
    """One CPU generator per image: its noise depends on its seed only, on every device."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def _is_flow_matching(scheduler: Any) -> bool:
    # DDIM needs a discrete noise schedule (betas); flow-matching schedulers have none.
    return "beta_schedule" not in scheduler.config and "trained_betas" not in scheduler.config


def scheduler_for(pipe: Any, name: str) -> Any:
    """The scheduler ``name`` (one of :data:`SCHEDULERS`) samples ``pipe`` with.

    ``ddim`` builds a DDIM scheduler from the pipeline's own config, so the betas, the
    timestep spacing, the offset and the prediction type stay the model's. A pipeline that
    already samples with DDIM, or a flow-matching one (no betas), keeps its scheduler.
    """
    if name not in SCHEDULERS:
        raise ConfigError("scheduler", f"got {name!r}; allowed: {', '.join(SCHEDULERS)}")
    current = pipe.scheduler
    if name == "pipeline" or isinstance(current, DDIMScheduler):
        return current
    if _is_flow_matching(current):
        logger.info(
            "scheduler 'ddim': %s is a flow-matching scheduler, DDIM does not apply; "
            "sampling with it",
            type(current).__name__,
        )
        return current
    return DDIMScheduler.from_config(current.config)


def use_scheduler(pipe: Any, name: str) -> Any:
    """Make ``pipe`` sample with the scheduler ``name`` from now on; returns ``pipe``."""
    pipe.scheduler = scheduler_for(pipe, name)
    return pipe


@contextmanager
def sampling_with(pipe: Any, name: str) -> Iterator[Any]:
    """``pipe`` samples with the scheduler ``name`` inside the block, with its own after."""
    before = pipe.scheduler
    pipe.scheduler = scheduler_for(pipe, name)
    try:
        yield pipe
    finally:
        pipe.scheduler = before


def check_schedule(pipe: Any, num_inference_steps: int) -> None:
    """Refuse, before sampling, a step count the pipeline's scheduler cannot run.

    Schedules with ``steps_offset`` 1 (Stable Diffusion's) reach timestep 1000 at 1000 steps,
    one past the training range (DDIM, PNDM and DDPM then fail inside diffusers); LCM runs
    at most its distillation's step count.
    """
    scheduler = pipe.scheduler
    if _is_flow_matching(scheduler):
        # Sigmas in (0, 1], timesteps sigma x 1000: any step count runs (FLUX's also needs
        # the image's size to set its timesteps).
        return
    trial = type(scheduler).from_config(scheduler.config)
    try:
        trial.set_timesteps(num_inference_steps)
    except ValueError as err:
        raise ConfigError(
            "num_inference_steps", f"got {num_inference_steps}; {type(scheduler).__name__}: {err}"
        ) from err
    train = int(getattr(scheduler.config, "num_train_timesteps", 0) or 0)
    timesteps = getattr(trial, "timesteps", None)
    if train and timesteps is not None and len(timesteps) and float(timesteps.max()) >= train:
        most = num_inference_steps - 1
        raise ConfigError(
            "num_inference_steps",
            f"got {num_inference_steps}; {type(scheduler).__name__} with steps_offset "
            f"{scheduler.config.get('steps_offset', 0)} would reach timestep "
            f"{int(timesteps.max())}, outside the {train} training timesteps; at most {most}",
        )
