from __future__ import annotations

import numpy as np
import pytest

from saeuron.minicanvas.assets import concept_hookpoint, concept_kind, concept_prompts
from saeuron.minicanvas.world import (
    ANCHOR_TEMPLATES,
    OBJECTS,
    STYLES,
    TEST_TEMPLATES,
    anchor_prompts,
    evaluation_prompts,
    render,
    sample_images,
    training_caption,
)
from saeuron.utils.config import ConfigError


def test_world_size_and_determinism() -> None:
    assert len(OBJECTS) >= 10 and len(STYLES) >= 10
    a, oa, sa = sample_images(200, seed=3)
    b, ob, sb = sample_images(200, seed=3)
    c, _, _ = sample_images(200, seed=4)
    assert a.shape == (200, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(oa, ob) and np.array_equal(sa, sb)
    assert not np.array_equal(a, c)
    # Balanced: every pair appears twice in 200 images.
    pairs = oa * len(STYLES) + sa
    assert np.bincount(pairs, minlength=100).tolist() == [2] * 100


def test_every_pair_renders_with_random_placement() -> None:
    rng = np.random.default_rng(0)
    for obj in OBJECTS:
        for style in STYLES:
            one, two = render(obj, style, rng), render(obj, style, rng)
            assert one.shape == (32, 32, 3)
            assert not np.array_equal(one, two), (obj, style)
    with pytest.raises(ValueError, match="unknown style"):
        render("star", "cubist", rng)


def test_prompt_sets_are_kept_apart() -> None:
    tests = evaluation_prompts()
    assert len(tests) == 100 + 10
    assert tests[0][0] == "An image of circle in striped style."
    assert tests[-1][0] == "An image of ring."
    anchors = {p for p, _, _ in anchor_prompts()}
    assert anchors.isdisjoint({p for p, _, _ in tests})
    assert all(not p.startswith("An image of") for p in anchors)
    rng = np.random.default_rng(0)
    captions = {training_caption(3, 4, rng) for _ in range(300)}
    assert TEST_TEMPLATES[0].format(object="star", style="gradient") in captions
    assert ANCHOR_TEMPLATES[0].format(object="star", style="gradient") in captions
    assert "An image of star." in captions


def test_concepts_map_to_their_blocks() -> None:
    assert concept_kind("star") == "object" and concept_kind("neon") == "style"
    assert concept_hookpoint("star") == "unet.up_blocks.1.attentions.1"
    assert concept_hookpoint("neon") == "unet.up_blocks.1.attentions.2"
    assert all("neon" in p for p in concept_prompts("neon"))
    assert all("star" in p for p in concept_prompts("star"))
    with pytest.raises(ConfigError, match="not a MiniCanvas concept"):
        concept_kind("cubism")


@pytest.mark.parametrize("every", [2, 3])
def test_sweep_retain_subset_keeps_every_object_and_style(every: int) -> None:
    from saeuron.minicanvas.judge import diagonal_subset, prompt_rows

    # The retained prompts of an object erasure: every pair but the erased object's.
    rows = prompt_rows(TEST_TEMPLATES[0], [11], only=("object", 3), exclude=True)
    kept = diagonal_subset(rows, every)
    assert {r[1] for r in kept} == {r[1] for r in rows}
    assert {r[2] for r in kept} == set(range(len(STYLES)))
    assert len(rows) // every - 1 <= len(kept) <= len(rows) // every + 1
    assert diagonal_subset(rows, 1) == list(rows)
