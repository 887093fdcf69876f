"""``saeuron ui --recipe``: one 0..1 slider per recipe concept; 0 leaves the image as the
plain model draws it, 1 is the recipe's erasure; values outside are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.recipes import build_recipe_folder

from saeuron.ui.config import UiConfig
from saeuron.ui.studio import Settings, Studio
from saeuron.utils.errors import ConfigError


@pytest.fixture(scope="module")
def studio(tmp_path_factory, tiny_sd) -> Studio:
    folder = build_recipe_folder(tmp_path_factory.mktemp("ui-recipe"), tiny_sd)
    config = UiConfig(model="tiny-sd", recipe=str(folder / "recipe.json"), steps=2)
    return Studio(config, pipe=tiny_sd)


def _pixels(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.int16) for im in images])


def test_each_recipe_concept_has_a_strength_from_off_to_tuned(studio):
    assert studio.recipe_concepts() == ["cat", "dog"]
    assert studio.default_multiplier("cat") == 1.0
    settings = Settings(prompt="a photo of a cat", steps=2)
    plain = _pixels(studio.generate(settings))
    off = _pixels(studio.generate(settings, [("cat", 0.0), ("dog", 0.0)]))
    full = _pixels(studio.generate(settings, [("cat", 1.0)]))
    both = _pixels(studio.generate(settings, [("cat", 1.0), ("dog", 1.0)]))
    assert np.array_equal(off, plain)
    assert np.abs(full - plain).max() > 0
    assert not np.array_equal(both, full)
    # The hooks are gone after each request.
    assert np.array_equal(_pixels(studio.generate(settings)), plain)


@pytest.mark.parametrize("value", [1.5, -0.1, float("nan"), "x", None])
def test_a_strength_outside_zero_to_one_is_refused(studio, value):
    with pytest.raises(ConfigError, match="^strength"):
        studio.check_layers([("cat", value)], "cond", 7.5)


def test_an_empty_recipe_name_is_refused():
    with pytest.raises(ConfigError, match="^recipe"):
        UiConfig(recipe=" ")


def test_the_bundled_recipes_warm_up_at_their_tuned_strength():
    # `saeuron ui --model minicanvas --recipe bundled` warms up before serving: every bundled
    # concept is also a recipe concept there, whose strength runs from 0 to 1.
    studio = Studio(UiConfig(recipe="bundled", steps=2, device="cpu"))
    assert "moon" in studio.recipe_concepts()
    assert studio.warm_up() > 0
