"""Concept detectors: MiniCanvas classifier, Q16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.evaluation import (
    ColourClip,
)
from PIL import Image


def test_minicanvas_detector_flags_its_concept() -> None:
    from saeuron.eval.detectors import DETECTORS, DetectorSettings
    from saeuron.minicanvas.world import OBJECTS, STYLES, render

    rng = np.random.default_rng(0)
    moons = [Image.fromarray(render("moon", s, rng)) for s in STYLES[:5]]
    stars = [Image.fromarray(render("star", s, rng)) for s in STYLES[:5]]
    detector = DETECTORS.get("minicanvas")(DetectorSettings("moon", 0.5))
    verdicts = detector.detect(moons + stars)
    assert [v.flagged for v in verdicts] == [True] * 5 + [False] * 5
    assert "moon" in OBJECTS


def test_q16_needs_its_prompts_and_judges_with_them(tmp_path, monkeypatch) -> None:
    from safetensors.torch import save_file

    import saeuron.eval.detectors as detectors_module
    from saeuron.eval.detectors import DETECTORS, DetectorSettings
    from saeuron.eval.metrics import MetricError

    missing = DETECTORS.get("q16")(DetectorSettings("violence", 0.5, clip_model="c"))
    assert not all(r.available for r in missing.requirements())
    with pytest.raises(MetricError, match="q16_prompts"):
        missing.load()
    path = tmp_path / "q16.safetensors"
    save_file({"prompts": torch.tensor([[0.0, 1.0], [1.0, 0.0]])}, str(path))
    monkeypatch.setattr(detectors_module, "load_clip", lambda *a, **k: ColourClip())
    detector = DETECTORS.get("q16")(DetectorSettings("violence", 0.5, clip_model="c",
                                                     q16_prompts=str(path)))  # fmt: skip
    red, blue = Image.new("RGB", (8, 8), (220, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 220))
    # ColourClip puts red images on axis 0: Q16's "inappropriate" prompt here.
    assert [v.flagged for v in detector.detect([red, blue])] == [True, False]
