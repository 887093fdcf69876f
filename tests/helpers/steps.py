"""What the step tracker reports while a pipeline samples."""

from __future__ import annotations

from typing import Any

import torch

from saeuron.models import denoising
from saeuron.models.denoiser import denoiser


def tracked_steps(pipe: Any, **call: Any) -> list[tuple[int, bool]]:
    """(step, cfg) the tracker reports at each denoiser call of one pipeline call."""
    seen: list[tuple[int, bool]] = []
    with denoising.track_denoising(pipe) as state:
        handle = denoiser(pipe).register_forward_hook(
            lambda *a: seen.append((state.step, state.guidance))
        )
        try:
            with torch.no_grad():
                pipe(["a cat"], output_type="latent", **call)
        finally:
            handle.remove()
    return seen
