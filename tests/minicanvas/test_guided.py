"""MiniCanvas' guidance-site and text-encoder SAEs: building them, and the benchmark's
recipe variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from saeuron.minicanvas.bench import BenchConfig
from saeuron.minicanvas.guided import (
    GuidedBuildConfig,
    prefix_vocabulary,
    prefixed_anchor_prompts,
    write_prompts_and_labels,
)
from saeuron.minicanvas.judge import prompt_rows, split_baseline
from saeuron.minicanvas.sequential import SequentialConfig
from saeuron.minicanvas.world import (
    ANCHOR_TEMPLATES,
    OBJECTS,
    STYLES,
    TEST_TEMPLATES,
    UNSTYLED_ANCHORS,
    anchor_prompts,
    caption,
)
from saeuron.models.pipelines import load_pipeline
from saeuron.training.capture_stats import read_label_rows
from saeuron.utils.config import ConfigError


def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_build_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="^guidance_scale:"):
        GuidedBuildConfig(guidance_scale=1.0)
    with pytest.raises(ConfigError, match="^stats_kinds:"):
        GuidedBuildConfig(stats_kinds=["unet.up_blocks.0.attentions.0=style"])
    cfg = GuidedBuildConfig(stats_kinds=["unet.up_blocks.2.attentions.2=style"])
    assert cfg.kinds_at("unet.up_blocks.2.attentions.2") == ["style"]
    assert cfg.kinds_at("unet.up_blocks.1.attentions.1") == ["object", "style"]
    with pytest.raises(ConfigError, match="^prefixed_copies:"):
        GuidedBuildConfig(prefixed_copies=-1)
    with pytest.raises(ConfigError, match="^prefix_words:"):
        GuidedBuildConfig(prefix_words=0)


def test_prefixed_copies_put_random_words_before_an_anchor_phrasing_and_keep_its_labels(
    tmp_path,
) -> None:
    vocabulary = prefix_vocabulary(load_pipeline("minicanvas").tokenizer)
    assert "sunset" in vocabulary and not {*OBJECTS, *STYLES} & set(vocabulary)
    # No word of a test-only name reaches an SAE's training prompts.
    assert not {"donut", "polka", "dot", "plus", "sign", "cyanotype"} & set(vocabulary)
    rows = prefixed_anchor_prompts(4, 3, vocabulary, seed=0)
    assert len(rows) == 4 * len(OBJECTS) * (len(STYLES) + 1)
    lengths = set()
    for prompt, obj, style in rows:
        templates = ANCHOR_TEMPLATES if style is not None else UNSTYLED_ANCHORS
        phrasings = [caption(OBJECTS[obj], STYLES[style] if style is not None else None, t)
                     for t in templates]  # fmt: skip
        phrasing = next(p for p in phrasings if prompt.endswith(p))
        prefix = prompt[: len(prompt) - len(phrasing)].split()
        assert all(w in vocabulary for w in prefix)
        lengths.add(len(prefix))
    assert lengths == {0, 1, 2, 3}
    assert prefixed_anchor_prompts(4, 3, vocabulary, seed=0) == rows
    assert prefixed_anchor_prompts(4, 3, vocabulary, seed=1) != rows
    # The capture reads prompts by line and labels by row: both in the same order, shuffled
    # so that the held-out shards (the last) are not the last objects' rows alone.
    prompts, labels = write_prompts_and_labels(tmp_path, 1, rows, seed=0)
    lines = prompts.read_text(encoding="utf-8").splitlines()
    table = read_label_rows(labels)
    expected = [*anchor_prompts(1), *rows]
    assert len(lines) == len(table) == len(expected)
    written = [(line, label["object"], label["style"]) for line, label in zip(lines, table,
                                                                              strict=True)]
    named = [(p, OBJECTS[o], STYLES[s] if s is not None else "") for p, o, s in expected]
    assert sorted(written) == sorted(named)
    assert written != named
    tail = {label["object"] for label in table[-len(table) // 10:]}
    assert len(tail) > 5


def test_bench_and_sequential_take_the_recipe_variant_and_check_their_options(tmp_path) -> None:
    cfg = BenchConfig(out=str(tmp_path / "b"), variants=["recipe"], grid_variant="recipe",
                      template="A {style} drawing of {object}.", retain_every=3)  # fmt: skip
    assert cfg.variants == ["none", "recipe"]
    with pytest.raises(ConfigError, match="^template:"):
        BenchConfig(out=str(tmp_path / "b"), template="A drawing of {object}.")
    with pytest.raises(ConfigError, match="^grid_variant:"):
        BenchConfig(out=str(tmp_path / "b"), grid_variant="best")
    with pytest.raises(ConfigError, match="^retain_every:"):
        BenchConfig(out=str(tmp_path / "b"), retain_every=0)
    assert SequentialConfig(out=str(tmp_path / "s"), variant="recipe").variant == "recipe"
    with pytest.raises(ConfigError, match="^variant:"):
        SequentialConfig(out=str(tmp_path / "s"), variant="best")


def test_retain_every_keeps_the_same_rows_in_the_baseline_and_the_erased_run() -> None:
    """The unerased split and the erased run judge retention on the same prompts."""
    from saeuron.minicanvas.judge import Judged, diagonal_subset

    rows = prompt_rows(TEST_TEMPLATES[0], [188])
    n = len(rows)
    baseline = Judged(
        objects=np.zeros(n, int), styles=np.zeros(n, int),
        true_objects=np.array([r[1] for r in rows]), true_styles=np.array([r[2] for r in rows]),
        images=list(range(n)),
    )  # fmt: skip
    _, retain = split_baseline(baseline, np.array([r[3] for r in rows]), "neon", [188], 1, 3)
    index = STYLES.index("neon")
    erased_rows = diagonal_subset(
        prompt_rows(TEST_TEMPLATES[0], [188], only=("style", index), exclude=True), 3
    )
    assert sorted(retain.images) == sorted(rows.index(r) for r in erased_rows)
    assert 0 < len(erased_rows) < 90
