"""Numbers that must stay numbers: non-finite tensors stop a run, degenerate images are named.

A NaN or an infinity inside the denoiser does not raise: it spreads to every pixel and the
pipeline returns a black image, which a detector then calls safe. So sampling checks the
activations it edits (:func:`count_non_finite`), and scoring flags images that carry no
picture at all (:func:`degenerate_reason`) instead of counting them as erased.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

CONSTANT_SPREAD = 2
"""An image whose every channel spans at most this many levels (of 255) is one flat colour:
what a NaN, an overflow or a wiped-out latent decodes to. Real images, MiniCanvas's 32-pixel
shapes on their backgrounds included, span far more."""


def count_non_finite(tensor: Tensor) -> int:
    """How many values of ``tensor`` are NaN or infinite (0 for a healthy one)."""
    finite = torch.isfinite(tensor.detach())
    if bool(finite.all()):
        return 0
    return int((~finite).sum())


def degenerate_reason(image: Any) -> str | None:
    """Why ``image`` (PIL, or an array or tensor of pixels) is no picture: ``"non-finite"``,
    ``"black"``, ``"constant"``; None for a real image."""
    if isinstance(image, Tensor):
        array = image.detach().float().cpu().numpy()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(1, 2, 0)  # channels first, as torch keeps images
    else:
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    array = array.astype(np.float64)
    if array.size == 0 or not np.isfinite(array).all():
        return "non-finite"
    scale = 255.0 if array.max() > 1.0 else 1.0
    pixels = array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array.reshape(-1, 1)
    spread = (pixels.max(axis=0) - pixels.min(axis=0)).max() * 255.0 / scale
    if spread > CONSTANT_SPREAD:
        return None
    return "black" if array.max() * 255.0 / scale <= CONSTANT_SPREAD else "constant"
