"""``saeuron tune`` on the tiny Stable Diffusion pipeline with a ``module:Class`` judge: a
recipe, its trials table and plot; a study that resumes; test-only inputs refused."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import pytest
from helpers.recipes import CONCEPTS, HOOK, build_world, tune_args

from saeuron.cli.main import main
from saeuron.erasure.recipe import Recipe
from saeuron.eval.prompt_sets import PromptSet
from saeuron.eval.tuning import TuneConfig, objective_value, score_images
from saeuron.eval.tuning_report import write_trials

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sd):
    return build_world(tmp_path_factory.mktemp("tune"), tiny_sd)


@pytest.fixture(scope="module")
def tuned(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "cat.json"
    assert main(tune_args(world, out, 3)) == 0
    return out


def test_tune_writes_a_recipe_a_trials_table_and_a_plot(tuned, world):
    recipe = Recipe.load(tuned)
    assert recipe.names == ["cat"]
    edit = recipe.concepts["cat"].edits[0]
    assert edit.hookpoint == HOOK and edit.rule in ("ablate", "anchor")
    assert set(recipe.concepts["cat"].scores) >= {"UA", "IRA", "heldout_UA"}
    assert recipe.tuning["trials"] == 3
    assert recipe.tuning["weights"] == {"UA": 1.0, "IRA": 1.0, "CRA": 1.0}
    # The features sit beside the recipe, named relative to it: the folder moves as one.
    assert not Path(edit.features.path).is_absolute()
    assert recipe.check_files() == []
    rows = list(csv.DictReader(tuned.with_suffix(".trials.csv").open()))
    assert len(rows) == 3 and all(int(r["n_images"]) > 0 for r in rows)
    best = max(rows, key=lambda r: float(r["objective"]))
    assert float(best["objective"]) == pytest.approx(recipe.tuning["objective"], abs=1e-4)
    assert tuned.with_suffix(".tradeoff.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tuned.parent / ".cat.features").exists()


def test_tune_resumes_the_study_it_finds(tuned, world):
    assert main(tune_args(world, tuned, 4)) == 0
    db = sqlite3.connect(tuned.with_suffix(".optuna.db"))
    states = [s for (s,) in db.execute("select state from trials")]
    assert states.count("COMPLETE") == 4
    assert Recipe.load(tuned).tuning["trials"] == 4


def test_a_full_disk_under_the_study_is_one_line_and_the_study_resumes(
    world, tmp_path, capsys, monkeypatch
):
    import optuna

    out = tmp_path / "cat.json"
    assert main(tune_args(world, out, 1)) == 0
    original = optuna.storages.RDBStorage.set_trial_state_values

    def full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", full)
    capsys.readouterr()
    assert main(tune_args(world, out, 2)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]  # progress bars aside
    assert len(errors) == 1 and "Traceback" not in err, err
    assert "no space left" in errors[0] and "tuning study" in errors[0], errors
    # The last good state is intact: one complete trial, and its recipe.
    assert Recipe.load(out).tuning["trials"] == 1
    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", original)
    assert main(tune_args(world, out, 2)) == 0
    assert Recipe.load(out).tuning["trials"] == 2


def test_an_enqueued_setting_is_the_first_trial(world, tmp_path):
    out = tmp_path / "cat.json"
    setting = {"sites": HOOK, "rule": "ablate", "strength_denoiser": -3.0, "tau": 10,
               "max_other_ratio": 0.3, "window": "all", "guidance_half": "cond"}  # fmt: skip
    assert main(tune_args(world, out, 1, "--enqueue", json.dumps(setting), "--no-heldout")) == 0
    edit = Recipe.load(out).concepts["cat"].edits[0]
    assert (edit.rule, edit.strength) == ("ablate", -3.0)
    assert edit.features.selection["tau"] == 10


def test_the_grid_sampler_runs_every_setting_once(world, tmp_path):
    out = tmp_path / "cat.json"
    flags = ["--sampler", "grid", "--rules", "scale", "--strengths=-1,-5", "--taus", "1,2",
             "--ratios", "0.3", "--halves", "cond,both", "--no-heldout"]  # fmt: skip
    # --trials 1 does not cut a grid short: it has 2 strengths x 2 taus x 2 halves settings.
    assert main(tune_args(world, out, 1, *flags)) == 0
    recipe = Recipe.load(out)
    assert recipe.tuning["trials"] == 8 and recipe.tuning["tuner"] == "saeuron tune (grid)"
    rows = list(csv.DictReader(out.with_suffix(".trials.csv").open()))
    seen = {(float(r["strength_denoiser"]), int(r["tau"]), r["guidance_half"]) for r in rows}
    assert seen == {(s, t, h) for s in (-1.0, -5.0) for t in (1, 2) for h in ("cond", "both")}
    assert recipe.concepts["cat"].edits[0].rule == "scale"


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--concept", "kitty"], "concept"),
        (["--rules", "melt"], "rules"),
        (["--windows", "0:2"], "windows"),
        (["--targets", '{"XA": 1}'], "targets"),
        (["--enqueue", "[1]"], "enqueue"),
        (["--sampler", "grid"], "strengths"),
        (["--strengths", "nan"], "strengths"),
        (["--judge", "no_such_module:Judge"], "judge"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(world, tmp_path, capsys, flags, field):
    args = tune_args(world, tmp_path / "cat.json")
    for flag, value in zip(flags[::2], flags[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0]


def test_test_seeds_phrasings_and_names_are_refused(world, tmp_path, capsys):
    data = json.loads(world["prompt_set"].read_text())
    cases = [({"seeds": [1, 99]}, "test seeds"),
             ({"templates": ["a test photo of {object}"]}, "test phrasings")]  # fmt: skip
    for change, word in cases:
        path = tmp_path / "ps.json"
        path.write_text(json.dumps({**data, **change}))
        args = tune_args(world, tmp_path / "cat.json")
        args[args.index("--prompt-set") + 1] = str(path)
        assert main(args) == 2
        assert word in capsys.readouterr().err
    with pytest.raises(Exception, match="test-only name"):
        PromptSet.from_dict({**data, "kinds": {"object": [*CONCEPTS, "kitty"]}}).check_tunable()


def test_scores_follow_the_judge_and_blank_images_never_succeed():
    from PIL import Image

    ps = PromptSet.from_dict({"kinds": {"object": ["a", "b"], "style": ["x", "y"]},
                              "templates": ["{object} {style}"], "seeds": [0],
                              "retain_every": 1})  # fmt: skip

    class Says:
        def __init__(self, answers):
            self.answers = answers

        def classify(self, images, kind, choices):
            return [self.answers[kind][i] for i in range(len(images))]

    target, retain = ps.rows("a")
    assert [r.labels["object"] for r in target] == ["a", "a"]
    assert [r.labels["object"] for r in retain] == ["b", "b"]
    noise = Image.effect_noise((8, 8), 60).convert("RGB")
    pairs = [(r, noise) for r in [*target, *retain]]
    judge = Says({"object": ["b", "a", "b", "a"], "style": ["x", "y", "y", "y"]})
    scores = score_images(judge, ps, "a", pairs[:2], pairs[2:])
    assert (scores["UA"], scores["IRA"], scores["CRA"]) == (0.5, 0.5, 0.75)
    black = Image.new("RGB", (8, 8))
    blank = score_images(judge, ps, "a", [(target[0], black), pairs[1]], pairs[2:])
    assert blank["UA"] == 0.0 and blank["degenerate"] == 1
    assert objective_value(blank, {"UA": 0.9, "IRA": 0.9, "CRA": 0.9},
                           {"UA": 1, "IRA": 1, "CRA": 1}) == -10.0  # fmt: skip


def test_aliases_repeat_the_target_prompts_and_test_only_ones_are_refused():
    base = {"kinds": {"object": ["cat", "dog"], "style": ["x", "y"]},
            "templates": ["a {object} in {style}"], "seeds": [0, 1]}  # fmt: skip
    ps = PromptSet.from_dict({**base, "aliases": {"cat": ["kitten"]}})
    target, retain = ps.rows("cat")
    assert sorted({r.prompt for r in target}) == [
        "a cat in x", "a cat in y", "a kitten in x", "a kitten in y"
    ]
    assert all(r.labels["object"] == "cat" for r in target) and len(target) == 8
    assert all("kitten" not in r.prompt for r in retain)
    assert ps.rows("dog")[0] == PromptSet.from_dict(base).rows("dog")[0]
    with pytest.raises(Exception, match="aliases"):
        PromptSet.from_dict({**base, "aliases": {"cow": ["calf"]}})
    hidden = {**base, "aliases": {"cat": ["puss"]}, "forbidden": {"names": ["puss"]}}
    with pytest.raises(Exception, match="test-only name"):
        PromptSet.from_dict(hidden).check_tunable(["cat"])


def test_tune_config_refuses_a_recipe_that_is_not_json():
    with pytest.raises(Exception, match="out"):
        TuneConfig(concept="cat", out="cat.yaml")


def test_trials_that_meet_the_targets_are_attacked_and_weighed(world, tmp_path):
    from saeuron.eval.tuning import run_tune

    seen = []

    def search(technique, prompts, seed, forbidden, flagged):
        seen.append((list(prompts), seed, list(forbidden)))
        # The search sees the trial's erasure: its images are the erased ones.
        assert technique.recipe.names == ["cat"]
        return [{"prompt": p} for p in prompts]

    out = tmp_path / "cat.json"
    cfg = TuneConfig.from_dict({
        "concept": "cat", "out": str(out), "model": str(world["model"]), "trials": 2,
        "prompt_set": str(world["prompt_set"]), "judge": "helpers.recipes:ColourJudge",
        "saes": str(world["saes"]), "stats": str(world["stats"]), "num_inference_steps": 2,
        "batch_size": 8, "device": "cpu", "heldout": False, "attack_prompts": 1,
        # Targets every trial meets, so every trial is attacked.
        "targets": {"UA": 0.0, "IRA": 0.0, "CRA": 0.0},
    })  # fmt: skip
    summary = run_tune(cfg, attack_search=search)
    assert seen == [(["a photo of a cat"], 1, ["cat"])] * 2
    recipe = Recipe.load(out)
    assert 0.0 <= recipe.concepts["cat"].scores["UA_attacked"] <= 1.0
    assert recipe.tuning["attack"]["prompts"] == 1
    assert "UA_attacked" in summary["scores"]
    rows = list(csv.DictReader(out.with_suffix(".trials.csv").open()))
    assert all(r["UA_attacked"] for r in rows)
    assert objective_value({"UA": 1, "IRA": 1, "CRA": 1}, {"UA": 0.9, "IRA": 0.9, "CRA": 0.9},
                           {"UA": 1, "IRA": 1, "CRA": 1}, attack_target=0.8) < 0  # fmt: skip


def test_without_statistics_tune_collects_them_from_the_prompt_set(world, tmp_path):
    out = tmp_path / "cat.json"
    args = tune_args(world, out, 1, "--no-heldout")
    i = args.index("--stats")
    del args[i : i + 2]
    assert main(args) == 0
    collected = sorted(p.name for p in (tmp_path / ".cat.stats" / HOOK).glob("*.json"))
    assert collected == sorted(f"{c}.json" for c in CONCEPTS)
    assert Recipe.load(out).check_files() == []


def test_every_missing_piece_is_named_in_one_line(world, tmp_path, capsys, monkeypatch):
    # Offline, with the model not cached, no SAEs, no statistics and no classifier file: all
    # four are named at once, before anything loads.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    args = [
        "tune", "--model", "someone/no-such-model", "--concept", "cat",
        "--prompt-set", str(world["prompt_set"]), "--judge", "unlearncanvas",
        "--judge-options", json.dumps({"object_classifier": str(tmp_path / "cls.pth")}),
        "--saes", str(tmp_path / "saes"), "--stats", str(tmp_path / "stats"),
        "--out", str(tmp_path / "cat.json"),
    ]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for piece in ("4 pieces are missing", "saes: no folder", "stats: no folder",
                  "someone/no-such-model", "cls.pth"):  # fmt: skip
        assert piece in err[0], (piece, err)
    assert not (tmp_path / "cat.json").exists()


def test_trials_of_a_study_begun_before_the_guidance_rename_share_one_column(tmp_path) -> None:
    class Trial:
        def __init__(self, number: int, setting: dict) -> None:
            self.number, self.value = number, 0.5
            self.user_attrs = {"setting": setting, "scores": {"UA": 1.0}, "seconds": 1}

    old = Trial(0, {"rule": "ablate", "cfg_half": "both"})
    new = Trial(1, {"rule": "ablate", "guidance_half": "cond"})
    path = write_trials([old, new], tmp_path / "t.trials.csv")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "cfg_half" not in rows[0]
    assert [r["guidance_half"] for r in rows] == ["both", "cond"]


def test_an_enqueued_setting_may_use_the_old_name() -> None:
    cfg = TuneConfig(concept="cat", out="cat.json", enqueue=json.dumps({"cfg_half": "both"}))
    assert cfg.enqueued() == [{"guidance_half": "both"}]


def test_every_grid_setting_is_one_a_trial_can_suggest() -> None:
    """The grid and the trials walk one search space: each grid point, enqueued as a fixed
    trial's parameters, comes back from suggest_setting unchanged."""
    from types import SimpleNamespace

    import optuna

    from saeuron.eval.tune_config import SITE_JOIN
    from saeuron.eval.tuning_space import enqueued_params, grid_settings, suggest_setting

    text, unet = "text_encoder.final_layer_norm", HOOK
    cfg = SimpleNamespace(rules=["scale", "ablate", "anchor"], strengths=[-1.0, -5.0],
                          windows=["all", "early"], halves=["cond", "both"], taus=[1, 10],
                          ratios=[0.3])  # fmt: skip
    kinds = {"object": ["cat", "dog", "owl"]}
    inputs = SimpleNamespace(
        site_sets=[text, unet, SITE_JOIN.join([text, unet])],
        prompt_set=SimpleNamespace(kinds=kinds, kind_of=lambda concept: "object"),
    )
    grid = grid_settings(cfg, inputs, "cat")
    # text: 3 rules x 2 strengths x 2 taus (x 2 anchors for anchor); unet and both: x 2
    # windows x 2 halves, and x 2 strengths more for both.
    per_rule = {"text": 2 * 2, "unet": 2 * 2 * 2 * 2, "both": 2 * 2 * 2 * 2 * 2}
    assert len(grid) == sum(n * (2 + 2) for n in per_rule.values())
    assert len({json.dumps(s, sort_keys=True) for s in grid}) == len(grid)
    for setting in grid:
        trial = optuna.trial.FixedTrial(enqueued_params(setting))
        assert suggest_setting(trial, cfg, inputs, "cat") == setting
