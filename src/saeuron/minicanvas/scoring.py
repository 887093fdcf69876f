"""The UnlearnCanvas protocol's three numbers (Zhang et al., 2024), as SAeUron reports them.

For an erased concept of one kind (a style, say), every image is judged by a classifier of
that kind (the "same" head) and one of the other kind (the "cross" head):

    UA  = 1 - same-head accuracy on the images that name the erased concept
    IRA = same-head accuracy on the images of the other concepts of its kind (retained)
    CRA = cross-head accuracy on the images it is computed on (all of them, or plain images)

One function serves the MiniCanvas benchmark and the ``unlearncanvas`` eval metric, so both
report the same numbers from the same verdicts.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def _mean(correct: Iterable[float] | np.ndarray) -> float:
    values = np.asarray(list(correct) if not isinstance(correct, np.ndarray) else correct, float)
    return float(values.mean()) if values.size else float("nan")


def unlearning_scores(
    target_same: Iterable[float] | np.ndarray,
    retain_same: Iterable[float] | np.ndarray,
    cross: Iterable[float] | np.ndarray,
) -> dict[str, float]:
    """UA, IRA and CRA from per-image correctness (1/0 or booleans); NaN where none."""
    return {"UA": 1.0 - _mean(target_same), "IRA": _mean(retain_same), "CRA": _mean(cross)}
