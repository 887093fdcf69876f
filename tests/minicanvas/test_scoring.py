"""One UnlearnCanvas scorer serves the MiniCanvas benchmark and the eval metric."""

from __future__ import annotations

import math

import numpy as np

from saeuron.eval.metrics import METRICS
from saeuron.minicanvas.judge import Judged, scores
from saeuron.minicanvas.scoring import unlearning_scores
from saeuron.minicanvas.world import OBJECTS, STYLES


def test_scores_from_verdicts() -> None:
    got = unlearning_scores([1, 0, 0, 0], [True, True, False], np.array([1.0, 1.0]))
    assert got == {"UA": 0.75, "IRA": 2 / 3, "CRA": 1.0}
    assert math.isnan(unlearning_scores([], [1], [1])["UA"])


def test_the_bench_and_the_metric_agree_on_the_same_verdicts() -> None:
    rng = np.random.default_rng(0)
    neon = STYLES.index("neon")
    n = 60
    true_o, true_s = rng.integers(0, len(OBJECTS), n), rng.integers(0, len(STYLES), n)
    true_s[:20] = neon
    true_s[20:][true_s[20:] == neon] = (neon + 1) % len(STYLES)
    pred_o = np.where(rng.random(n) < 0.8, true_o, (true_o + 1) % len(OBJECTS))
    pred_s = np.where(rng.random(n) < 0.6, true_s, (true_s + 1) % len(STYLES))
    target, retain = slice(0, 20), slice(20, n)
    judged = [
        Judged(pred_o[part], pred_s[part], true_o[part], true_s[part], [])
        for part in (target, retain)
    ]
    bench = scores("neon", *judged)
    rows = [
        {
            "group": "target" if i < 20 else "retain",
            "object_correct": float(pred_o[i] == true_o[i]),
            "style_correct": float(pred_s[i] == true_s[i]),
        }
        for i in range(n)
    ]
    metric = METRICS.get("unlearncanvas")(
        METRICS.get("unlearncanvas").Config(concept="neon")
    ).summarize(rows)
    for key in ("UA", "IRA", "CRA"):
        assert math.isclose(bench[key], metric[key])
    assert 0 < bench["UA"] < 1 and 0 < bench["CRA"] < 1
