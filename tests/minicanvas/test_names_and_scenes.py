"""Other names for each concept and two-object scenes: the world, the prompts, the scores."""

from __future__ import annotations

import re

import numpy as np
import pytest

from saeuron.minicanvas.judge import JudgedScenes, alias_rows, scene_rows, scene_scores
from saeuron.minicanvas.world import (
    ANCHOR_TEMPLATES,
    OBJECTS,
    SCENE_TEMPLATES,
    SCENE_TEST_TEMPLATES,
    STYLES,
    TEST_ONLY_NAMES,
    TEST_TEMPLATES,
    UNSTYLED_ANCHORS,
    UNSTYLED_TEMPLATES,
    VALIDATION_NAMES,
    anchor_prompts,
    render_scene,
    sample_scenes,
    scene_caption,
    training_caption,
)


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", text.lower())))


def test_every_concept_has_three_distinct_names_and_test_only_ones_share_no_template_word():
    concepts = {*OBJECTS, *STYLES}
    assert set(TEST_ONLY_NAMES) == set(VALIDATION_NAMES) == concepts
    test_words = {w for n in TEST_ONLY_NAMES.values() for w in n.split()}
    validation_words = {w for n in VALIDATION_NAMES.values() for w in n.split()}
    assert not test_words & validation_words and not test_words & concepts
    templates = [*TEST_TEMPLATES, *UNSTYLED_TEMPLATES, *ANCHOR_TEMPLATES, *UNSTYLED_ANCHORS,
                 *SCENE_TEMPLATES, *SCENE_TEST_TEMPLATES]  # fmt: skip
    assert not test_words & set().union(*map(_words, templates))
    # The prompts SAEs and statistics are made from never hold a test-only name.
    for prompt, _, _ in anchor_prompts(per_pair=6):
        assert not test_words & _words(prompt), prompt


def test_training_captions_use_every_name_and_scenes_name_both_objects():
    rng = np.random.default_rng(0)
    captions = [training_caption(i % 10, (i // 10) % 10, rng) for i in range(2000)]
    text = " ".join(captions)
    for concept in ("moon", "neon"):
        for name in (concept, TEST_ONLY_NAMES[concept], VALIDATION_NAMES[concept]):
            assert f" {name}" in text
    scene = scene_caption((6, 3), 2, np.random.default_rng(1))
    names = lambda c: {c, TEST_ONLY_NAMES[c], VALIDATION_NAMES[c]}  # noqa: E731
    assert any(n in scene for n in names("moon")) and any(n in scene for n in names("star"))


def test_a_scene_puts_two_objects_apart_and_is_reproducible():
    images, objects, styles = sample_scenes(12, seed=3)
    again, objects_again, _ = sample_scenes(12, seed=3)
    assert images.shape == (12, 32, 32, 3) and (images == again).all()
    assert (objects == objects_again).all() and (objects[:, 0] != objects[:, 1]).all()
    rng = np.random.default_rng(0)
    image = render_scene(("moon", "star"), "neon", rng).astype(int)
    # Neon paints a dark background: both halves hold a bright magenta outline.
    magenta = (image[..., 0] > 150) & (image[..., 2] > 150) & (image[..., 1] < 120)
    assert magenta[:, :16].sum() > 10 and magenta[:, 16:].sum() > 10
    assert not magenta[:, 15:17].any()


def test_alias_rows_use_the_test_only_name_with_the_concepts_labels():
    rows = alias_rows("moon", [188, 288])
    assert len(rows) == 20 and all("crescent" in p and "moon" not in p for p, *_ in rows)
    assert {o for _, o, _, _ in rows} == {OBJECTS.index("moon")}
    style_rows = alias_rows("dotted", [188])
    assert all("polka dot style" in p for p, *_ in style_rows)
    assert {s for _, _, s, _ in style_rows} == {STYLES.index("dotted")}
    with pytest.raises(Exception, match="not a MiniCanvas concept"):
        alias_rows("zebra", [1])


@pytest.mark.parametrize("concept", ["moon", "checkered"])
def test_scene_rows_hold_the_concept_beside_others(concept):
    rows = scene_rows(concept, [188, 288])
    assert len(rows) == 20
    for prompt, (a, b), style, _ in rows:
        assert a != b and prompt == SCENE_TEST_TEMPLATES[0].format(
            object=OBJECTS[a], object2=OBJECTS[b], style=STYLES[style]
        )
        if concept == "moon":
            assert OBJECTS.index("moon") in (a, b)
        else:
            assert STYLES[style] == "checkered"
    if concept == "moon":
        firsts = [pair[0] == OBJECTS.index("moon") for _, pair, _, _ in rows]
        assert 0 < sum(firsts) < len(rows)
        assert len({pair for _, pair, _, _ in rows}) == 18


def test_scene_scores_count_the_erased_object_gone_and_the_other_kept():
    moon, star, ring = OBJECTS.index("moon"), OBJECTS.index("star"), OBJECTS.index("ring")
    present = np.zeros((3, len(OBJECTS)), bool)
    present[0, star] = True  # moon gone, star kept
    present[1, [moon, ring]] = True  # moon still there, ring kept
    present[2, []] = True  # both gone
    scenes = JudgedScenes(present, np.zeros(3, int), np.array([[moon, star], [ring, moon],
                          [moon, star]]), np.zeros(3, int), [None] * 3)  # fmt: skip
    got = scene_scores("moon", scenes)
    assert got["scene_UA"] == pytest.approx(2 / 3)
    assert got["scene_retention"] == pytest.approx(2 / 3)
    styled = JudgedScenes(present, np.array([0, 1, 1]), scenes.true_objects,
                          np.zeros(3, int), [None] * 3)  # fmt: skip
    got = scene_scores(STYLES[0], styled)
    # Style UA: 2 of 3 no longer the style; retention counts both objects of every scene.
    assert got["scene_UA"] == pytest.approx(2 / 3)
    assert got["scene_retention"] == pytest.approx(3 / 6)


def test_the_bundles_prompt_set_tunes_on_validation_names_and_refuses_test_only_ones(
    tmp_path, capsys
):
    from saeuron.cli.main import main
    from saeuron.eval.prompt_sets import PromptSet
    from saeuron.models.bundles import find_bundle

    bundle = find_bundle("minicanvas")
    prompt_set = PromptSet.load(bundle.folder / "prompt_set.json")
    assert prompt_set.aliases == {c: [n] for c, n in VALIDATION_NAMES.items()}
    assert sorted(prompt_set.forbidden.names) == sorted(TEST_ONLY_NAMES.values())
    prompt_set.check_tunable(["moon"])
    for concept in ("crescent", "polka dot"):
        assert main(["tune", "--concept", concept, "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "test-only name" in err[0], err
    assert not (tmp_path / "x.json").exists()
