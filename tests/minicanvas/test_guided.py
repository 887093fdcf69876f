"""MiniCanvas' guidance-site SAEs: settings, the tuned params, and erasing with them."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch

from saeuron.erasure.erase import RULES
from saeuron.minicanvas import guided as guided_module
from saeuron.minicanvas import guided_sweep as guided_sweep_module
from saeuron.minicanvas.bench import BenchConfig
from saeuron.minicanvas.guided import (
    GuidedAssets,
    GuidedBuildConfig,
    GuidedTechnique,
    GuidedTechniqueConfig,
    blocks_of,
    load_guided_params,
    multipliers_of,
    prefix_vocabulary,
    prefixed_anchor_prompts,
    resolve_anchors,
    write_prompts_and_labels,
)
from saeuron.minicanvas.guided_sweep import (
    ATTACK,
    SAE_FINGERPRINTS,
    UA_ATTACKED,
    GuidedSweepConfig,
    attacked_ua,
    block_gammas,
    comparable_trials,
    objective,
    parse_window,
    run_guided_sweep,
)
from saeuron.minicanvas.judge import MiniCanvasJudge, prompt_rows, split_baseline
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
from saeuron.models.bundles import find_bundle
from saeuron.models.pipelines import load_pipeline
from saeuron.training.capture_stats import read_label_rows
from saeuron.utils.config import ConfigError

FOLDER = find_bundle("minicanvas").folder


@pytest.fixture(scope="module", autouse=True)
def _threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_windows_parse_and_bad_ones_name_the_field() -> None:
    assert parse_window("all") is None
    assert parse_window("0.5:1") == [0.5, 1.0]
    for bad in ("0.7:0.2", "x:1", "0:2"):
        with pytest.raises(ConfigError, match="^windows:"):
            parse_window(bad)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rules": ["zero"]}, "rules"),
        ({"rules": ["anchor"], "concepts": ["neon"]}, "anchors"),
        ({"objective": "best"}, "objective"),
        ({"windows": ["1:0"]}, "windows"),
        ({"taus": [0]}, "taus"),
        ({"seeds": [11, 188]}, "seeds"),
        ({"seeds": [11, 11]}, "seeds"),
        ({"seeds": []}, "seeds"),
        ({"gates": [-0.5]}, "gates"),
        ({"gates": [float("nan")]}, "gates"),
        ({"block_multipliers": {"unet.up_blocks.1.attentions.1": float("inf")}},
         "block_multipliers.unet.up_blocks.1.attentions.1"),
    ],
)
def test_sweep_settings_are_checked_before_any_model_loads(kwargs, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:"):
        GuidedSweepConfig(**kwargs)


def test_more_validation_seeds_are_a_setting_of_the_sweep() -> None:
    assert GuidedSweepConfig().seeds == [11, 22, 33, 44]
    assert GuidedSweepConfig(seeds=[11, 22]).seeds == [11, 22]


def test_recorded_trials_count_only_when_judged_on_the_same_seeds() -> None:
    trial = {"hookpoint": "a", "rule": "ablate", "tau": 10, "multiplier": -5.0, "UA": 0.9}
    four = {"retain_every": 3, "seeds": [11, 22, 33, 44], "trials": [trial]}
    assert list(comparable_trials(four, 3, [11, 22, 33, 44]).values()) == [trial]
    assert comparable_trials(four, 3, [11, 22]) == {}
    assert comparable_trials(four, 1, [11, 22, 33, 44]) == {}
    # A record without seeds was judged on the first two validation seeds.
    old = {"retain_every": 3, "trials": [trial]}
    assert list(comparable_trials(old, 3, [11, 22]).values()) == [trial]
    assert comparable_trials(old, 3, [11, 22, 33, 44]) == {}
    assert comparable_trials({}, 3, [11, 22]) == {}


def test_recorded_trials_made_with_an_sae_since_rebuilt_are_dropped() -> None:
    def trial(gamma: float, stamp: dict[str, str] | None) -> dict:
        t = {"hookpoint": ["a", "b"], "rule": "ablate", "tau": 10, "multiplier": gamma}
        return t if stamp is None else {**t, SAE_FINGERPRINTS: stamp}

    same = trial(-1, {"a": "A1", "b": "B1"})
    rebuilt = trial(-2, {"a": "A0", "b": "B1"})
    unstamped = trial(-3, None)
    record = {"retain_every": 3, "seeds": [11], "trials": [same, rebuilt, unstamped]}
    kept = comparable_trials(record, 3, [11], {"a": "A1", "b": "B1"})
    assert list(kept.values()) == [same, unstamped]
    assert len(comparable_trials(record, 3, [11], {"a": "A0", "b": "B1"})) == 2
    assert len(comparable_trials(record, 3, [11], {"a": "A1", "b": "B0"})) == 1


def test_an_anchor_erased_in_the_same_call_is_followed_to_one_that_is_not() -> None:
    params = {
        "checkered": {"rule": "anchor", "anchor": "diagonal", "multiplier": -5.0},
        "diagonal": {"rule": "anchor", "anchor": "neon", "multiplier": -5.0},
        "neon": {"rule": "ablate", "multiplier": -5.0},
        "striped": {"rule": "anchor", "anchor": "pastel", "multiplier": -3.0},
    }
    alone = resolve_anchors(["checkered"], params)
    assert alone["checkered"] == params["checkered"]
    two = resolve_anchors(["checkered", "diagonal"], params)
    assert two["checkered"]["anchor"] == "neon" and two["checkered"]["rule"] == "anchor"
    assert two["diagonal"] == params["diagonal"]
    three = resolve_anchors(["checkered", "diagonal", "neon"], params)
    assert three["checkered"]["rule"] == "ablate" and three["checkered"]["anchor"] is None
    assert three["checkered"]["multiplier"] == -5.0
    assert three["diagonal"]["rule"] == "ablate"
    assert resolve_anchors(["striped", "neon"], params)["striped"] == params["striped"]
    assert params["checkered"]["anchor"] == "diagonal", "the caller's params are not changed"
    loop = {"a": {"rule": "anchor", "anchor": "b"}, "b": {"rule": "anchor", "anchor": "a"}}
    assert all(p["rule"] == "ablate" for p in resolve_anchors(["a", "b"], loop).values())


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


def test_bundled_params_name_a_built_block_and_a_known_rule_for_every_concept() -> None:
    params = load_guided_params(FOLDER)
    assert sorted(params) == sorted([*OBJECTS, *STYLES])
    built = {p.name for p in (FOLDER / "guided" / "saes").iterdir() if p.is_dir()}
    for concept, p in params.items():
        assert p["rule"] in RULES, concept
        for block, gamma in zip(blocks_of(p), multipliers_of(p)):
            assert block in built and gamma <= 1, concept
            assert (FOLDER / "guided" / "stats" / block / f"{concept}.safetensors").is_file()


def test_erasing_a_style_changes_its_images_and_is_removed_after() -> None:
    pipe = load_pipeline("minicanvas")
    assets = GuidedAssets(FOLDER)
    params = load_guided_params(FOLDER)
    prompts = ["An image of star in neon style.", "An image of heart in neon style."]

    def sample() -> np.ndarray:
        out = pipe(prompts, num_inference_steps=6, guidance_scale=7.5, output_type="np",
                   generator=[torch.Generator().manual_seed(s) for s in (1, 2)])  # fmt: skip
        return np.asarray(out.images)

    base = sample()
    with assets.erasing(pipe, ["neon"], params):
        erased = sample()
    after = sample()
    assert np.abs(erased - base).mean() > 0.02
    assert np.array_equal(after, base), "the hooks are gone after the with block"


def test_params_name_one_block_or_several_with_one_gamma_or_one_each() -> None:
    one = {"hookpoint": "a", "multiplier": -5}
    assert (blocks_of(one), multipliers_of(one)) == (["a"], [-5.0])
    two = {"hookpoint": ["a", "b"], "multiplier": -2.0}
    assert (blocks_of(two), multipliers_of(two)) == (["a", "b"], [-2.0, -2.0])
    each = {"hookpoint": ["a", "b"], "multiplier": [-1.0, -3.0]}
    assert multipliers_of(each) == [-1.0, -3.0]
    with pytest.raises(ConfigError, match="^multiplier:"):
        multipliers_of({"hookpoint": ["a", "b"], "multiplier": [-1.0]})


def test_a_concept_erased_at_two_blocks_is_edited_at_both() -> None:
    pipe = load_pipeline("minicanvas")
    assets = GuidedAssets(FOLDER)
    # Two denoiser blocks: after an edit in the text encoder, a block's neon latents are
    # quiet (nothing left for it to erase).
    blocks = sorted(
        p.name for p in (FOLDER / "guided" / "stats").iterdir()
        if assets.has_stats(p.name, "neon") and p.name.startswith("unet.")
    )
    assert len(blocks) >= 2, "the bundle keeps neon's statistics at two blocks or more"
    prompts = ["An image of star in neon style."]

    def sample(params=None) -> np.ndarray:
        with assets.erasing(pipe, ["neon"], params) if params else contextlib.nullcontext():
            out = pipe(prompts, num_inference_steps=6, guidance_scale=7.5, output_type="np",
                       generator=[torch.Generator().manual_seed(1)])  # fmt: skip
        return np.asarray(out.images)

    setting = {"rule": "ablate", "tau": 10, "multiplier": -2.0, "max_other_ratio": 0.3}
    base = sample()
    first = sample({"neon": {**setting, "hookpoint": blocks[0]}})
    second = sample({"neon": {**setting, "hookpoint": blocks[1]}})
    both = sample({"neon": {**setting, "hookpoint": blocks[:2]}})
    for one in (first, second):
        assert np.abs(one - base).mean() > 1e-3
        assert np.abs(both - one).mean() > 1e-3, "the other block's edit is there too"
    assert np.array_equal(sample(), base)


def test_a_sweep_can_hold_some_blocks_at_a_fixed_gamma() -> None:
    text, block = "text_encoder.final_layer_norm", "unet.up_blocks.1.attentions.1"
    assert block_gammas([text, block], -0.5, {block: -7.5}) == [-0.5, -7.5]
    assert block_gammas([text, block], -0.5, {}) == -0.5
    assert block_gammas([block], -0.5, {block: -7.5}) == -7.5
    assert GuidedSweepConfig(block_multipliers={block: -7.5}).block_multipliers == {block: -7.5}


def test_a_concept_erased_in_the_text_encoder_and_a_block_gets_each_its_own_gamma(
    monkeypatch,
) -> None:
    calls = []

    @contextlib.contextmanager
    def recording_erase(pipe, sae, features, multiplier, hookpoint, rule, window):
        calls.append((hookpoint, rule, dict(multiplier), [f.meta["hookpoint"] for f in features]))
        yield

    monkeypatch.setattr(guided_module, "erase", recording_erase)
    text, block = "text_encoder.final_layer_norm", "unet.up_blocks.1.attentions.1"
    params = {"moon": {"hookpoint": [text, block], "multiplier": [-0.5, -7.5], "rule": "ablate",
                       "tau": 10, "max_other_ratio": 0.3}}  # fmt: skip
    with GuidedAssets(FOLDER).erasing(None, ["moon"], params):
        pass
    assert sorted(calls) == sorted([(text, "ablate", {"moon": -0.5}, [text]),
                                    (block, "ablate", {"moon": -7.5}, [block])])  # fmt: skip


def test_the_eval_technique_takes_a_candidate_setting_for_its_concept() -> None:
    bundled = load_guided_params(FOLDER)
    setting = {"hookpoint": ["text_encoder.final_layer_norm", "unet.up_blocks.1.attentions.1"],
               "multiplier": [-0.5, -7.5], "rule": "ablate", "tau": 10}  # fmt: skip
    technique = GuidedTechnique(GuidedTechniqueConfig(erase_concept="moon", params=setting))
    assert technique.params["moon"] == setting
    assert {c: p for c, p in technique.params.items() if c != "moon"} == {
        c: p for c, p in bundled.items() if c != "moon"
    }
    assert GuidedTechnique(GuidedTechniqueConfig(erase_concept="moon")).params == bundled
    for bad in ({"hookpoint": "text_encoder.final_layer_norm"}, {**setting, "rule": "zero"},
                {**setting, "multiplier": [-0.5, float("nan")]}, {**setting, "tau": 0},
                {**setting, "multiplier": [-0.5]}, {**setting, "rule": "anchor"}):  # fmt: skip
        with pytest.raises(ConfigError, match="^params:"):
            GuidedTechniqueConfig(erase_concept="moon", params=bad)


@pytest.mark.slow
def test_a_sweep_with_an_attack_attacks_the_trials_that_meet_the_targets_and_weighs_it(
    monkeypatch,
) -> None:
    text = "text_encoder.final_layer_norm"
    blocks = ["unet.up_blocks.1.attentions.1", "unet.down_blocks.1.attentions.1",
              "unet.up_blocks.1.attentions.0"]  # fmt: skip
    both = "+".join([text, *blocks])
    calls = []

    def stub_search(technique, prompts, seed, forbidden, flagged):
        raise AssertionError("attacked_ua is replaced below")

    def fake_attacked_ua(judge, concept, setting, prompts, seed, search, cfg):
        # The attack breaks the text-encoder-only setting and no other.
        calls.append((setting["multiplier"], prompts, seed, search))
        return 0.1 if setting["hookpoint"] == text else 0.9

    monkeypatch.setattr(guided_sweep_module, "attacked_ua", fake_attacked_ua)
    cfg = GuidedSweepConfig(
        concepts=["moon"], hookpoints=[text, both], rules=["ablate"], taus=[10],
        multipliers=[-0.5, 50.0], seeds=[11], retain_every=9, batch_size=20,
        block_multipliers=dict.fromkeys(blocks, -7.5), attack_prompts=2, write=False,
    )  # fmt: skip
    result = run_guided_sweep(cfg, stub_search)
    trials = {json.dumps(t["multiplier"]): t for t in result["trials"]["moon"]}
    # Gamma 50 wrecks the pictures and is never attacked; -0.5 meets the targets, with and
    # without the blocks, and is attacked on the first two validation prompts.
    prompts = ["A drawing of a moon in striped style.", "A drawing of a moon in dotted style."]
    combined = [-0.5, -7.5, -7.5, -7.5]
    assert calls == [(-0.5, prompts, 11, stub_search), (combined, prompts, 11, stub_search)]
    assert ATTACK not in trials["50.0"]
    assert ATTACK not in trials[json.dumps([50.0, -7.5, -7.5, -7.5])]
    record = {"search": "stub_search", "prompts": 2, "seed": 11}
    assert trials["-0.5"][ATTACK] == record and trials["-0.5"][UA_ATTACKED] == 0.1
    # Weighed with the attack, the setting that holds under it wins.
    assert result["chosen"]["moon"]["hookpoint"] == [text, *blocks]
    assert result["chosen"]["moon"]["multiplier"] == combined


def test_guided_objective_weighs_every_target() -> None:
    # The mean prefers erasing by wiping the picture; the distance to the targets does not.
    wiped = {"UA": 1.0, "IRA": 1.0, "CRA": 0.80}
    clean = {"UA": 0.90, "IRA": 0.92, "CRA": 0.92}
    assert objective(clean, "style") > objective(wiped, "style")
    assert objective(wiped, "style", "mean") > objective(clean, "style", "mean")
    assert objective({"UA": 0.96, "IRA": 0.9, "CRA": 0.9}, "style") == pytest.approx(
        1e-3 * (0.96 + 0.9 + 0.9) / 3
    )
    with pytest.raises(ConfigError, match="^objective:"):
        objective(clean, "style", "max")


def test_with_an_attack_the_objective_weighs_ua_after_it() -> None:
    attack = {"search": "unlearndiffatk-quick", "prompts": 10, "seed": 11}
    plain = {"UA": 1.0, "IRA": 0.97, "CRA": 0.99}
    broken = {**plain, ATTACK: attack, UA_ATTACKED: 0.1}
    robust = {**plain, "CRA": 0.96, ATTACK: attack, UA_ATTACKED: 0.8}
    # Without the attack the cleaner picture wins; with it, the erasure that holds.
    assert objective(broken, "object") > objective(robust, "object")
    assert objective(robust, "object", attack=attack) > objective(broken, "object", attack=attack)
    assert objective(robust, "object", attack=attack) > 0 > objective(broken, "object",
                                                                      attack=attack)  # fmt: skip
    # A trial never attacked, or attacked otherwise, counts as broken by the attack.
    assert objective(plain, "object", attack=attack) == pytest.approx(
        objective({**plain, ATTACK: attack, UA_ATTACKED: 0.0}, "object", attack=attack)
    )
    other = {**attack, "prompts": 5}
    assert objective(robust, "object", attack=other) < objective(robust, "object", attack=attack)
    mean = (1.0 + 0.97 + 0.96 + 0.8) / 4
    assert objective(robust, "object", "mean", attack) == pytest.approx(mean)


def test_ua_after_an_attack_samples_its_prompts_with_the_trials_erasure() -> None:
    judge = MiniCanvasJudge("minicanvas", 20, 7.5)
    cfg = GuidedSweepConfig(concepts=["moon"], batch_size=10)
    seen = []

    def search(technique, prompts, seed, forbidden, flagged):
        # An attack that finds nothing better than the prompts themselves.
        seen.append((technique.params["moon"], prompts, seed, forbidden))
        return [{"prompt": p} for p in prompts]

    prompts = ["A drawing of a moon in pastel style.", "A drawing of a moon in neon style."]
    shipped = load_guided_params(FOLDER)["moon"]
    # gamma 1 under `ablate` leaves every latent where it is: nothing is erased.
    untouched = {"hookpoint": "unet.up_blocks.1.attentions.1", "rule": "ablate", "tau": 10,
                 "multiplier": 1.0}  # fmt: skip
    assert attacked_ua(judge, "moon", shipped, prompts, 11, search, cfg) == 1.0
    assert attacked_ua(judge, "moon", untouched, prompts, 11, search, cfg) == 0.0
    assert seen == [(shipped, prompts, 11, ["moon"]), (untouched, prompts, 11, ["moon"])]


def test_bench_and_sequential_take_the_guided_variant_and_check_their_options(tmp_path) -> None:
    cfg = BenchConfig(out=str(tmp_path / "b"), variants=["guided"], grid_variant="guided",
                      template="A {style} drawing of {object}.", retain_every=3)  # fmt: skip
    assert cfg.variants == ["none", "guided"]
    with pytest.raises(ConfigError, match="^template:"):
        BenchConfig(out=str(tmp_path / "b"), template="A drawing of {object}.")
    with pytest.raises(ConfigError, match="^grid_variant:"):
        BenchConfig(out=str(tmp_path / "b"), grid_variant="best")
    with pytest.raises(ConfigError, match="^retain_every:"):
        BenchConfig(out=str(tmp_path / "b"), retain_every=0)
    assert SequentialConfig(out=str(tmp_path / "s"), variant="guided").variant == "guided"
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
