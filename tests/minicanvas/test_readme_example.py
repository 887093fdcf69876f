"""The README's first Python example does what the README says it does."""

from __future__ import annotations

import torch

import saeuron
from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.world import OBJECTS, STYLES
from saeuron.models.bundles import find_bundle


def test_the_readme_moon_example_erases_the_moon_and_keeps_the_plain_one() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bundle = find_bundle("minicanvas")
        assert bundle is not None
        judge = MiniCanvasClassifier.load(bundle.classifier_folder)
        tech = saeuron.SAeUron(erase_concept="moon", model="minicanvas")
        prompts = ["An image of moon in checkered style."] * 3
        images = tech.generate(prompts, seeds=[0, 1, 2])
        plain = tech.generate(prompts, seeds=[0, 1, 2], erase_concept=False)
    finally:
        torch.set_num_threads(threads)
    objects, styles = judge.predict(images)
    plain_objects, _ = judge.predict(plain)
    assert [OBJECTS[i] for i in plain_objects] == ["moon"] * 3
    assert "moon" not in [OBJECTS[i] for i in objects]
    assert [STYLES[i] for i in styles].count("checkered") >= 2
