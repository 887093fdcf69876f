"""Judges by name or ``module:Class``; what each answers for the MiniCanvas classifier."""

from __future__ import annotations

import pytest
from PIL import Image

from saeuron.eval.judges import JUDGES, degenerate, make_judge
from saeuron.minicanvas.world import render
from saeuron.models.bundles import find_bundle
from saeuron.utils.errors import ConfigError


def test_the_built_in_judges_are_registered_by_name():
    assert {"minicanvas", "unlearncanvas", "clip", "nudenet"} <= set(JUDGES.names())


def test_the_minicanvas_judge_names_what_it_sees():
    import numpy as np

    judge = make_judge("minicanvas", folder=find_bundle("minicanvas").folder)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(render(o, s, rng)) for o, s in (("moon", "neon"), ("star", "dotted"))]
    objects = judge.classify(images, "object", ["moon", "star", "circle"])
    assert objects == ["moon", "star"]
    # A member the prompt set does not hold is "none of them".
    assert judge.classify(images, "style", ["striped"]) == ["", ""]
    with pytest.raises(ConfigError, match="^judge"):
        judge.classify(images, "colour", ["red"])


def test_plugins_are_module_class_and_must_classify():
    assert type(make_judge("helpers.recipes:ColourJudge")).__name__ == "ColourJudge"
    with pytest.raises(ConfigError, match="^judge: cannot import"):
        make_judge("no_such_module_here:Judge")
    with pytest.raises(ConfigError, match="has no 'Nope'"):
        make_judge("helpers.recipes:Nope")
    with pytest.raises(ConfigError, match="classify"):
        make_judge("collections:OrderedDict")
    with pytest.raises(ConfigError, match="style_classifier"):
        make_judge("unlearncanvas")


def test_blank_and_non_finite_images_are_degenerate():
    assert degenerate(Image.new("RGB", (8, 8)))
    assert not degenerate(Image.effect_noise((8, 8), 50).convert("RGB"))
