"""One progress bar for a whole sampling job, however many pipeline calls it takes.

The stock pipelines draw a bar per call; a job of eight calls would draw eight. A
:class:`StepProgress` counts denoising steps across every call of a job instead, through the
pipelines' own ``callback_on_step_end``, so on a big model the bar moves with every step::

    with StepProgress(total=len(batches) * steps, desc="sampling") as progress:
        for batch in batches:
            images += progress.run(pipe, batch, num_inference_steps=steps).images
"""

from __future__ import annotations

import inspect
from typing import Any

from tqdm.auto import tqdm

CALLBACK = "callback_on_step_end"


def accepts_step_callback(pipe: Any) -> bool:
    try:
        return CALLBACK in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


class StepProgress:
    """A bar over the denoising steps of several pipeline calls."""

    def __init__(self, total: int, desc: str = "sampling", disable: bool = False):
        self.bar = tqdm(total=total, desc=desc, unit="step", disable=disable, dynamic_ncols=True)
        self.done = 0
        """Steps counted so far (also when the bar is not drawn)."""

    def _advance(self, steps: int) -> None:
        self.done += steps
        self.bar.update(steps)

    def run(self, pipe: Any, *args: Any, **kwargs: Any) -> Any:
        """``pipe(*args, **kwargs)``, counting its steps on the bar. A ``callback_on_step_end``
        of the caller's still runs, and its return value is the one the pipeline gets."""
        steps = int(kwargs.get("num_inference_steps") or 0)
        seen = 0
        if accepts_step_callback(pipe):
            theirs = kwargs.get(CALLBACK)

            def count(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict) -> dict:
                nonlocal seen
                seen += 1
                self._advance(1)
                if theirs is not None:
                    return theirs(pipeline, step, timestep, callback_kwargs)
                return callback_kwargs

            kwargs[CALLBACK] = count
        out = pipe(*args, **kwargs)
        # Pipelines without the callback move the bar once per call; a scheduler that runs
        # fewer timesteps than asked still completes its share.
        if seen < steps:
            self._advance(steps - seen)
        return out

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
