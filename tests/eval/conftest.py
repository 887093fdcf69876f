"""Fixtures of the eval tests."""

from __future__ import annotations

import pytest
from helpers.evaluation import (
    ColourClip,
    ColourTechnique,
)


@pytest.fixture
def colour(monkeypatch):
    import saeuron.eval.metrics.ua_ira as ua_ira_module
    import saeuron.eval.runner as runner

    made = []

    def build(name, cfg):
        made.append(ColourTechnique(getattr(build, "fail_after", None)))
        return made[-1]

    ColourTechnique.calls = 0
    monkeypatch.setattr(runner, "build_technique", build)
    # The stand-in needs no model, so nothing of the configured one is checked either.
    monkeypatch.setattr(runner, "check_technique_config", lambda cfg: None)
    import saeuron.eval.clip as clip_module

    real = clip_module.load_clip

    def fake(model, device=None):
        # The default CLIP (not on this machine) is stood in for; any other goes through.
        return ColourClip() if model == clip_module.DEFAULT_CLIP else real(model, device)

    for module in (ua_ira_module, clip_module):
        monkeypatch.setattr(module, "load_clip", fake)
    return build
