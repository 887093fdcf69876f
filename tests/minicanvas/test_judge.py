"""The MiniCanvas judge's features carry the fingerprint of the SAE they were selected with."""

from __future__ import annotations

import logging

from saeuron.minicanvas.assets import concept_hookpoint
from saeuron.minicanvas.judge import MiniCanvasJudge


def test_features_selected_from_the_bundle_statistics_record_their_sae(caplog) -> None:
    judge = MiniCanvasJudge("minicanvas", steps=2)
    features = judge.features("moon", tau=1, max_other_ratio=0.5)
    assert features.sae_fingerprint == judge.saes[concept_hookpoint("moon")].fingerprint()
    # Erasing with them checks the fingerprint and has nothing to warn about.
    with caplog.at_level(logging.WARNING, logger="saeuron"):
        with judge.erase("moon", 1, -100.0, max_other_ratio=0.5):
            pass
    assert "do not record the SAE" not in caplog.text
