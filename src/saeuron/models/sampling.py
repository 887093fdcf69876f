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
from typing import Any

import torch
from diffusers import DDIMScheduler

from saeuron.models.sampling_config import MAX_SIDE, SCHEDULERS, SamplingConfig
from saeuron.utils.config import ConfigError

# The config is re-exported from the torch-free module that --help reads.
__all__ = [
    "MAX_SIDE",
    "SCHEDULERS",
    "SamplingConfig",
    "check_schedule",
    "sampling_with",
    "scheduler_for",
    "seed_generators",
    "use_scheduler",
]

logger = logging.getLogger(__name__)


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
