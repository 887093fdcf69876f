"""Knowing the denoising step while the stock pipeline samples.

Hooks never count calls. :class:`DenoiseTracker` puts a pre-hook on the denoiser that reads,
at each call, where the pipeline stands in its sampling loop:

- **the position**: the index of this call in ``scheduler.timesteps``, the array the
  pipeline's loop runs over. The scheduler's own index says it where it keeps one
  (``step_index`` of the Euler, Heun, DPM-Solver, UniPC and LCM schedulers, ``counter`` of
  PNDM), checked against the call's timestep; schedulers without one (DDIM, DDPM) never
  repeat a timestep, so the timestep finds it.
- **the step**: the position counted as diffusers' own loop counts its progress
  (``num_warmup_steps = len(timesteps) - num_inference_steps * order``; a step ends at each
  position ``i`` with ``i + 1 > num_warmup_steps`` and ``(i + 1) % order == 0``, and at the
  last). So a step is one update of the sample, ``num_inference_steps`` of them whatever the
  scheduler:

  - DDIM, DDPM, Euler, Euler ancestral, DPM-Solver++, UniPC, LCM: one denoiser call per step.
  - Heun and DPM2 (``order`` 2) call the denoiser twice per step, at its start (``substep``
    0) and to correct it (``substep`` 1); the last step has only the first call.
  - PNDM (Stable Diffusion 1.x's default, ``skip_prk_steps``) runs N + 1 calls for N steps:
    its first step is two calls (the second at the timestep the next step starts from), the
    rest one each.

  Code that records one value per step (capture, statistics) reads the ``substep`` 0 call;
  the erasure edits every call with its step's features.
- **outside a pipeline's loop** (a white-box attack calling the UNet at any training
  timestep, a UNet call between pipeline calls): ``step`` is -1 and ``timestep`` holds the
  call's timestep, so an edit can pick the statistics row nearest to it. A scheduler that
  keeps its index tells such calls apart by it; with DDIM or DDPM, which keep none, a call
  outside the loop at one of the schedule's own timesteps reads as that step.

It also reads from the pipeline whether the batch is a classifier-free-guidance pair: the
pipeline's ``do_classifier_free_guidance`` property where it has one, else (PixArt, whose
CFG is a local ``guidance_scale > 1``) the ``do_classifier_free_guidance`` argument its
``encode_prompt`` was last called with.
The pre-hook runs eagerly (``torch.compiler.disable``): under ``torch.compile`` the state is
read outside the graph, and :attr:`DenoiseState.step_tensor` hands the step to compiled code
as a tensor, so a new step does not recompile it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from saeuron.models.denoiser import denoiser

Listener = Callable[["DenoiseState", Tensor | None], None]
"""Called after the state is updated, before each denoiser call, with the denoiser's input."""


@dataclass
class DenoiseState:
    """What the pipeline is doing right now, as read from its own call."""

    step: int = -1
    """The pipeline's step, ``0 .. num_steps - 1`` (module docstring); -1 outside its loop."""
    num_steps: int = 0
    """Steps of the schedule being sampled (``num_inference_steps``); 0 outside a loop."""
    timestep: float = float("nan")
    """The timestep this call was made with (in the scheduler's units)."""
    guidance: bool = False
    """True when the denoiser batch is ``[uncond; cond]``."""
    substep: int = 0
    """0 for a step's first denoiser call, 1 for a second-order scheduler's second call."""
    position: int = -1
    """Index of this call in ``scheduler.timesteps`` (-1 outside the loop)."""
    in_loop: bool = False
    """``step >= 0``, kept as a flag so compiled code can branch on it without reading
    the step (an int that changes every call would recompile it)."""
    step_tensor: Tensor = field(default_factory=lambda: torch.full((1,), -1, dtype=torch.long))
    """``[step]`` as an int64 tensor on the device of the denoiser's input, updated in place."""


def _timestep_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | float | None:
    if "timestep" in kwargs:
        return kwargs["timestep"]
    return args[1] if len(args) > 1 else None


def _sample_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
    if args and torch.is_tensor(args[0]):
        return args[0]
    for name in ("sample", "hidden_states"):
        if torch.is_tensor(kwargs.get(name)):
            return kwargs[name]
    return None


def step_layout(num_positions: int, num_inference_steps: int, order: int = 1) -> list[int]:
    """The step of each position of a schedule of ``num_positions`` timesteps.

    The rule of diffusers' sampling loops (their progress bar and step callbacks): a step
    ends at position ``i`` when ``i + 1 > num_positions - num_inference_steps * order`` and
    ``(i + 1) % order == 0``, and at the last position.
    """
    warmup = num_positions - num_inference_steps * order
    steps, done = [], 0
    for i in range(num_positions):
        steps.append(done)
        if i == num_positions - 1 or (i + 1 > warmup and (i + 1) % order == 0):
            done += 1
    return steps


def _close(a: float, b: float) -> bool:
    # Timesteps reach the denoiser as the scheduler holds them, or cast to the latents'
    # dtype (half precision keeps three digits): a tolerance of one part in a hundred.
    return abs(a - b) <= max(0.5, 1e-2 * abs(b))


def _scheduler_index(scheduler: Any) -> int | None:
    """The scheduler's own position in its timesteps, where it keeps one."""
    if hasattr(scheduler, "step_index"):
        index = scheduler.step_index
        if index is None:
            # Not started yet: the next step is the begin index (img2img), else the first.
            index = getattr(scheduler, "begin_index", None)
            return 0 if index is None else int(index)
        return int(index)
    counter = getattr(scheduler, "counter", None)  # PNDM
    return counter if isinstance(counter, int) else None


class DenoiseTracker:
    """Keeps a :class:`DenoiseState` up to date while ``pipe`` samples, until removed.

    ``listeners`` (and :meth:`add_listener`) are called after each update with the state
    and the denoiser's input, outside any compiled graph.
    """

    def __init__(self, pipe: Any, listeners: tuple[Listener, ...] = ()):
        self.pipe = pipe
        self.state = DenoiseState()
        self._listeners = list(listeners)
        self._layout_key: tuple[Any, ...] | None = None
        self._layout: list[int] = []
        self._first: list[int] = []
        self._num_steps = 0
        self._step_tensors: dict[torch.device, Tensor] = {}
        self._prompt_guidance: bool | None = None
        self._restore_encode_prompt = self._watch_encode_prompt(pipe)
        self._handle = denoiser(pipe).register_forward_pre_hook(self._pre_hook, with_kwargs=True)

    def _watch_encode_prompt(self, pipe: Any) -> Callable[[], None] | None:
        """Read CFG from ``encode_prompt``'s argument on pipelines without the property."""
        if hasattr(type(pipe), "do_classifier_free_guidance"):
            return None
        original = getattr(pipe, "encode_prompt", None)
        if original is None:
            return None
        try:
            signature = inspect.signature(original)
        except (TypeError, ValueError):
            return None
        if "do_classifier_free_guidance" not in signature.parameters:
            return None
        shadowed = pipe.__dict__.get("encode_prompt")

        # functools.wraps keeps the signature pipelines may inspect.
        @functools.wraps(original)
        def encode_prompt(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            self._prompt_guidance = bool(bound.arguments["do_classifier_free_guidance"])
            return original(*args, **kwargs)

        # An instance attribute shadows the class's method for this pipeline only; trackers
        # nest (an erasure inside a capture), each restoring what it found.
        pipe.encode_prompt = encode_prompt

        def restore() -> None:
            if shadowed is None:
                pipe.__dict__.pop("encode_prompt", None)
            else:
                pipe.__dict__["encode_prompt"] = shadowed

        return restore

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _steps(self, scheduler: Any, timesteps: Tensor) -> tuple[list[int], int]:
        n = len(timesteps)
        order = int(getattr(scheduler, "order", 1) or 1)
        steps = getattr(scheduler, "num_inference_steps", None) or max(1, n // order)
        key = (n, int(steps), order)
        if key != self._layout_key:
            self._layout = step_layout(n, int(steps), order)
            self._num_steps = self._layout[-1] + 1
            self._first = [0] * self._num_steps
            for position in reversed(range(n)):
                self._first[self._layout[position]] = position
            self._layout_key = key
        return self._layout, self._num_steps

    def _position(self, scheduler: Any, t: float, timesteps: Tensor) -> int | None:
        n = len(timesteps)
        train = float(getattr(scheduler.config, "num_train_timesteps", 1000) or 1000)
        # Some transformer pipelines pass t / num_train_timesteps: either scale may match.
        candidates = (t, t * train) if 0 <= t <= 1 else (t,)
        index = _scheduler_index(scheduler)
        if index is not None:
            # The scheduler knows where it is: this call is in its loop only if it is at that
            # position (after the loop, or at another timestep, it is a call from outside).
            if 0 <= index < n and any(_close(c, float(timesteps[index])) for c in candidates):
                return index
            return None
        # Schedulers without an index never repeat a timestep: it finds the position.
        values = timesteps.detach().float().cpu()
        for c in candidates:
            best = int((values - c).abs().argmin())
            if _close(c, float(values[best])):
                return best
        return None

    @torch.compiler.disable
    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        state, pipe = self.state, self.pipe
        scheduler = pipe.scheduler
        t = _timestep_arg(args, kwargs)
        if self._restore_encode_prompt is not None:
            state.guidance = bool(self._prompt_guidance)
        else:
            state.guidance = bool(getattr(pipe, "do_classifier_free_guidance", False))
        if t is None:
            t_value = float("nan")
        else:
            t_value = float(t.flatten()[0]) if torch.is_tensor(t) else float(t)
        state.timestep = t_value
        timesteps = getattr(scheduler, "timesteps", None)
        position = None
        # A scheduler that was never set for sampling holds its training timesteps.
        if (
            t is not None
            and timesteps is not None
            and len(timesteps) > 0
            and getattr(scheduler, "num_inference_steps", None) is not None
        ):
            position = self._position(scheduler, t_value, timesteps)
        if position is None:
            state.step, state.num_steps, state.position, state.substep = -1, 0, -1, 0
            state.in_loop = False
        else:
            layout, num_steps = self._steps(scheduler, timesteps)
            step = layout[position]
            state.step, state.num_steps, state.position = step, num_steps, position
            state.substep = position - self._first[step]
            state.in_loop = True
        sample = _sample_arg(args, kwargs)
        device = sample.device if sample is not None else torch.device("cpu")
        holder = self._step_tensors.get(device)
        if holder is None:
            holder = self._step_tensors[device] = torch.empty(1, dtype=torch.long, device=device)
        # fill_ with a host int launches a kernel and never waits for the device.
        holder.fill_(state.step)
        state.step_tensor = holder
        for listener in self._listeners:
            listener(state, sample)

    def remove(self) -> None:
        self._handle.remove()
        if self._restore_encode_prompt is not None:
            self._restore_encode_prompt()
            self._restore_encode_prompt = None


@contextmanager
def track_denoising(pipe: Any) -> Iterator[DenoiseState]:
    """Keep a :class:`DenoiseState` up to date while ``pipe`` samples."""
    tracker = DenoiseTracker(pipe)
    try:
        yield tracker.state
    finally:
        tracker.remove()
