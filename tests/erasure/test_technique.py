from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pytest
import torch

from saeuron.cli.main import build_parser
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.technique import (
    DEFAULT_MULTIPLIER,
    SAeUron,
    SAeUronConfig,
)
from saeuron.models.bundles import find_bundle
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.config import ConfigError
from saeuron.utils.devices import resolve_device

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    torch.manual_seed(5)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = HOOK
    folder = tmp_path_factory.mktemp("sae") / HOOK
    sae.save_to_disk(folder)
    return folder.parent


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def tiny_config(sae_dir, **overrides):
    base = dict(
        erase_concept="cat",
        model="tiny-sd",
        sae=str(sae_dir),
        hookpoint=HOOK,
        num_inference_steps=3,
        device="cpu",
        multiplier=-20.0,
    )
    base.update(overrides)
    return base


def test_seed_defaults_and_published_sae_resolution() -> None:
    cfg = SAeUronConfig()
    assert (cfg.erase_concept, cfg.multiplier, cfg.num_inference_steps) == ("nudity", None, 50)
    assert DEFAULT_MULTIPLIER == -20.0  # SAeUron's default for concepts without a tuned one
    assert (cfg.guidance_scale, cfg.use_fp16, cfg.device) == (7.5, True, None)
    assert cfg.resolved_sae() == ("bcywinski/SAeUron_coco", "unet.up_blocks.1.attentions.1")
    assert cfg.resolved_sae() == ("bcywinski/SAeUron_coco", "unet.up_blocks.1.attentions.1")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"erase_concept": ""}, "erase_concept"),
        ({"erase_concept": "   "}, "erase_concept"),
        ({"multiplier": 0.0}, "multiplier"),
        ({"guidance_scale": 1.0}, "guidance_scale"),
        ({"guidance_scale": 0.0}, "guidance_scale"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"device": "gpu"}, "device"),
        ({"guidance_half": "uncond"}, "guidance_half"),
        ({"error_term": "approx"}, "error_term"),
        ({"feature_method": "magic"}, "feature_method"),
        ({"height": 100}, "height"),
        ({"model": "someone/other-model"}, "sae"),
        ({"multipler": -5.0}, "multipler"),
        ({"use_fp16": "maybe"}, "use_fp16"),
        ({"rule": "zero"}, "rule"),
        ({"rule": "ablate", "error_term": "paper"}, "error_term"),
        ({"window": [0.6, 0.2]}, "window"),
        ({"window": [0.0, float("nan")]}, "window"),
    ],
)
def test_every_validation_error_names_its_field(overrides, field) -> None:
    with pytest.raises(ConfigError, match=f"^{field}:") as err:
        SAeUron(**overrides)
    if field == "multipler":
        assert "did you mean 'multiplier'" in str(err.value)
    if field == "guidance_scale":
        assert "guidance_half='both'" in str(err.value)


def test_guidance_free_models_are_allowed_with_both_halves() -> None:
    cfg = SAeUronConfig(guidance_scale=0.0, guidance_half="both")
    assert cfg.guidance_scale == 0.0


def test_the_old_name_cfg_half_still_configures_the_technique(caplog) -> None:
    # 'both' is not the default: an old name dropped on the way would read as 'cond'.
    new = SAeUronConfig(guidance_scale=0.0, guidance_half="both")
    with caplog.at_level(logging.WARNING, logger="saeuron.utils.config"):
        assert SAeUronConfig(guidance_scale=0.0, cfg_half="both") == new
        assert SAeUronConfig.from_dict({"guidance_scale": 0.0, "cfg_half": "both"}) == new
        technique = SAeUron(model="minicanvas", guidance_scale=0.0, cfg_half="both")
        assert technique.config.guidance_half == "both"
    told = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(told) == 3 and all("use 'guidance_half'" in m for m in told)
    with pytest.raises(ConfigError, match="given twice") as err:
        SAeUron(guidance_scale=0.0, cfg_half="both", guidance_half="cond")
    assert err.value.field == "guidance_half"


@pytest.mark.parametrize("flag", ["--guidance-half", "--cfg-half"])
def test_the_command_line_takes_the_old_flag_too_and_hides_it(flag) -> None:
    parser = build_parser("generate")
    args = parser.parse_args(["generate", "--prompt", "p", "--out", "o.png",
                              "--guidance-scale", "0", flag, "both"])  # fmt: skip
    assert SAeUronConfig.from_args(args) == SAeUronConfig(guidance_scale=0.0, guidance_half="both")
    both = parser.parse_args(["generate", "--prompt", "p", "--out", "o.png",
                              "--cfg-half", "both", "--guidance-half", "cond"])  # fmt: skip
    with pytest.raises(ConfigError, match="^guidance_half: given twice"):
        SAeUronConfig.from_args(both)
    generate = next(a for a in parser._subparsers._group_actions).choices["generate"]
    assert "--guidance-half" in generate.format_help()
    assert "--cfg-half" not in generate.format_help()


def test_device_auto_detection_falls_back_to_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device(None).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None).type == "cuda"
    assert resolve_device("cpu").type == "cpu"


def test_on_the_fly_features_are_announced_before_models_load(sae_dir, cache_dir, caplog) -> None:
    # A folder that passes the checks made from config files, but holds no weights to load.
    empty = cache_dir / "weightless-model"
    empty.mkdir(parents=True)
    (empty / "model_index.json").write_text(
        '{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}'
    )
    with caplog.at_level(logging.WARNING, logger="saeuron.erasure.technique"):
        with pytest.raises((FileNotFoundError, OSError, ConfigError)):
            SAeUron(**tiny_config(sae_dir, model=str(empty)))
    assert "computed on the fly" in caplog.text


def test_a_missing_model_is_refused_before_the_announcement(sae_dir, cache_dir, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="saeuron.erasure.technique"):
        with pytest.raises(ConfigError, match="^model: .*no-such-model"):
            SAeUron(**tiny_config(sae_dir, model=str(cache_dir / "no-such-model")))
    assert "computed on the fly" not in caplog.text


def test_generate_erases_and_is_reproducible(sae_dir, cache_dir) -> None:
    tech = SAeUron(**tiny_config(sae_dir))
    assert tech.concept.concept == "cat"
    assert tech.concept.hookpoint == HOOK
    erased = tech.generate(["a cat", "a dog"], seed=1)
    again = tech.generate(["a cat", "a dog"], seed=1)
    plain = tech.generate(["a cat", "a dog"], seed=1, erase_concept=False)
    assert len(erased) == 2 and erased[0].size == (32, 32)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(erased, again))
    assert not np.array_equal(np.asarray(erased[0]), np.asarray(plain[0]))
    # A second technique on the same concept reuses the cached features.
    tech2 = SAeUron(**tiny_config(sae_dir))
    assert torch.equal(tech2.concept.indices, tech.concept.indices)


def test_rule_and_window_reach_the_erasure(sae_dir, cache_dir) -> None:
    """``rule`` and ``window`` are technique settings: a rule other than ``scale`` and a
    window over the last step each give an image unlike the published rule's and the
    unerased one, and the command line parses both."""
    prompts = ["a cat"]
    scale = SAeUron(**tiny_config(sae_dir, multiplier=-5.0))
    plain = np.asarray(scale.generate(prompts, seed=1, erase_concept=False)[0])
    by_scale = np.asarray(scale.generate(prompts, seed=1)[0])
    ablate = SAeUron(**tiny_config(sae_dir, multiplier=-5.0, rule="ablate"))
    by_ablate = np.asarray(ablate.generate(prompts, seed=1)[0])
    late = SAeUron(**tiny_config(sae_dir, multiplier=-5.0, window=[0.9, 1.0]))
    assert late.config.window == [0.9, 1.0]
    by_late = np.asarray(late.generate(prompts, seed=1)[0])
    assert not np.array_equal(by_scale, plain)
    assert not np.array_equal(by_ablate, plain) and not np.array_equal(by_ablate, by_scale)
    # 3 steps sit at positions 0, 0.5 and 1: the window [0.9, 1] edits the last one only.
    assert not np.array_equal(by_late, plain) and not np.array_equal(by_late, by_scale)
    # The CLI parses the same fields.
    parser = argparse.ArgumentParser()
    SAeUronConfig.add_arguments(parser)
    args = parser.parse_args(["--rule", "ablate", "--window", "0.5,1", "--sae", str(sae_dir)])
    cfg = SAeUronConfig.from_args(args, model="tiny-sd", hookpoint=HOOK)
    assert (cfg.rule, cfg.window) == ("ablate", [0.5, 1.0])


def test_precomputed_features_file_is_used(sae_dir, cache_dir, tmp_path) -> None:
    features = ConceptFeatures.from_latents("x", [3, 7], meta={"hookpoint": HOOK})
    features.save(tmp_path / "cat_features")
    tech = SAeUron(**tiny_config(sae_dir, features=str(tmp_path / "cat_features")))
    assert tech.concept.latents() == {3, 7}
    assert tech.concept.concept == "cat"


def test_generate_cli_writes_side_by_side_png(sae_dir, cache_dir, tmp_path) -> None:
    from PIL import Image

    from saeuron.cli.main import main

    out = tmp_path / "img.png"
    code = main(
        [
            "generate",
            "--erase",
            "cat",
            "--prompt",
            "a cat",
            "--out",
            str(out),
            "--model",
            "tiny-sd",
            "--sae",
            str(sae_dir),
            "--hookpoint",
            HOOK,
            "--num-inference-steps",
            "2",
            "--device",
            "cpu",
            "--side-by-side",
        ]
    )
    assert code == 0
    assert Image.open(out).size == (64, 32)


def test_generate_cli_reports_bad_input_without_traceback(tmp_path, capsys) -> None:
    from saeuron.cli.main import main

    code = main(
        [
            "generate",
            "--erase",
            "cat",
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "a.png"),
            "--guidance-scale",
            "1.0",
        ]
    )
    assert code == 2
    assert "guidance_scale" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


def test_bundled_concepts_use_their_recipe_or_the_papers_tuned_multiplier(cache_dir) -> None:
    from saeuron.minicanvas.assets import load_params

    folder = find_bundle("minicanvas").folder
    default = SAeUron(erase_concept="moon", model="minicanvas", device="cpu")
    assert default.recipe is not None and default.recipe.names == ["moon"]
    shipped = json.loads((folder / "recipes" / "moon.json").read_text())["concepts"]["moon"]
    assert [e.hookpoint for e in default.recipe.concepts["moon"].edits] == [
        e["hookpoint"] for e in shipped["edits"]
    ]
    tuned = load_params(folder)["moon"]["multiplier"]
    paper = SAeUron(erase_concept="moon", model="minicanvas", device="cpu", preset="paper",
                    pipe=default.pipe)  # fmt: skip
    assert paper.recipe is None and paper.multiplier == tuned
    # Naming a setting of the published method chooses it too.
    told = SAeUron(erase_concept="moon", model="minicanvas", device="cpu", multiplier=-3.0,
                   pipe=default.pipe)  # fmt: skip
    assert told.recipe is None and told.multiplier == -3.0


def test_readme_example_erases_the_moon_at_seeds_0_to_2(cache_dir) -> None:
    """README, "Python API": the moon is gone and the style stays, judged by the bundled
    classifier, at seeds 0, 1 and 2."""
    from saeuron.minicanvas.classifier import MiniCanvasClassifier
    from saeuron.minicanvas.world import OBJECTS, STYLES

    tech = SAeUron(erase_concept="moon", model="minicanvas", device="cpu")
    prompts = ["An image of moon in checkered style."] * 3
    classifier = MiniCanvasClassifier.load(find_bundle("minicanvas").folder / "classifier")
    objects, styles = classifier.predict(tech.generate(prompts, seed=0))
    plain_objects, _ = classifier.predict(tech.generate(prompts, seed=0, erase_concept=False))
    assert [OBJECTS[i] for i in plain_objects] == ["moon"] * 3
    assert "moon" not in [OBJECTS[i] for i in objects]
    assert [STYLES[i] for i in styles].count("checkered") >= 2


def test_several_concepts_erase_each_at_its_own_block(cache_dir) -> None:
    both = SAeUron(erase_concept=["moon", "checkered"], model="minicanvas", device="cpu",
                   preset="paper")  # fmt: skip
    assert both.config.erase_concept == "moon,checkered"
    assert [f.concept for f in both.concepts] == ["moon", "checkered"]
    assert {g.hookpoint for g in both.groups} == {
        "unet.up_blocks.1.attentions.1",
        "unet.up_blocks.1.attentions.2",
    }
    bundle = find_bundle("minicanvas")
    from saeuron.minicanvas.assets import load_params

    tuned = load_params(bundle.folder)
    assert both.multipliers == {c: tuned[c]["multiplier"] for c in ("moon", "checkered")}
    moon = SAeUron(erase_concept="moon", model="minicanvas", device="cpu", preset="paper")
    prompt = ["An image of moon in checkered style."]
    with both.erase() as handle:
        assert len(handle.erasures) == 2
    images = [np.asarray(t.generate(prompt, seed=0)[0], dtype=np.float32) for t in (both, moon)]
    assert np.abs(images[0] - images[1]).mean() > 1.0  # checkered's edit adds to moon's
    with pytest.raises(ConfigError, match="^erase_concept:"):
        SAeUron(erase_concept="moon, moon", model="minicanvas")
    with pytest.raises(ConfigError, match="^erase_concept:"):
        SAeUron(erase_concept=["moon,star"], model="minicanvas")


def test_the_callers_pipeline_and_sae_are_used_as_given(
    sae_dir, cache_dir, tiny_sd, tmp_path, forbid_model_loading
) -> None:
    sae = Sae.from_pretrained(sae_dir, hookpoint=HOOK)
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), meta={"hookpoint": HOOK})
    features.save(tmp_path / "cat")
    settings = dict(erase_concept="cat", features=str(tmp_path / "cat"), multiplier=-20.0,
                    num_inference_steps=3)  # fmt: skip
    with pytest.raises(ConfigError, match="^model:"):
        SAeUron(pipe=tiny_sd, sae=sae, **settings)  # an in-memory pipeline has no name
    tech = SAeUron(pipe=tiny_sd, sae=sae, model="tiny-sd", **settings)
    assert tech.pipe is tiny_sd and tech.sae is sae and tech.hookpoint == HOOK
    erased = tech.generate(["a cat"], seed=0)[0]
    plain = tech.generate(["a cat"], seed=0, erase_concept=False)[0]
    assert not np.array_equal(np.asarray(erased), np.asarray(plain))
    # Nothing is left on the caller's pipeline.
    from saeuron.models.hookpoints import resolve_module

    assert not resolve_module(tiny_sd, HOOK)._forward_hooks


def test_a_generation_that_edits_nothing_warns_once(sae_dir, cache_dir, tmp_path, caplog):
    silent = ConceptFeatures.from_latents("cat", [1, 2], threshold=1e9, meta={"hookpoint": HOOK})
    silent.save(tmp_path / "silent")
    tech = SAeUron(**tiny_config(sae_dir, features=str(tmp_path / "silent")))
    with caplog.at_level(logging.WARNING):
        tech.generate(["a cat"], seed=0)
        tech.generate(["a cat"], seed=1)
    assert caplog.text.count("nothing was erased") == 1
    assert "'cat'" in caplog.text


def test_progress_counts_every_step_of_a_call(sae_dir, cache_dir, tmp_path) -> None:
    from saeuron.models.progress import StepProgress

    ConceptFeatures.from_latents("cat", [3], meta={"hookpoint": HOOK}).save(tmp_path / "cat")
    tech = SAeUron(**tiny_config(sae_dir, batch_size=1, features=str(tmp_path / "cat")))
    with StepProgress(100, disable=True) as bar:
        tech.generate(["a cat", "a dog"], seed=0, progress=bar)
        assert bar.done == 2 * 3  # two batches of three steps
        tech.generate(["a cat"], seed=0, erase_concept=False, progress=bar)
        assert bar.done == 3 * 3


def test_a_built_config_is_the_first_argument(
    sae_dir, cache_dir, tiny_sd, tmp_path, forbid_model_loading
) -> None:
    features = ConceptFeatures.from_latents("cat", list(range(0, 128, 4)), meta={"hookpoint": HOOK})
    features.save(tmp_path / "cat")
    config = SAeUronConfig(**tiny_config(sae_dir, features=str(tmp_path / "cat")))
    tech = SAeUron(config, pipe=tiny_sd)
    assert tech.pipe is tiny_sd and tech.hookpoint == HOOK
    # The technique works on a copy: the caller's config is left as it was given.
    assert tech.config.to_dict() == config.to_dict() and tech.config is not config
    by_keys = SAeUron(pipe=tiny_sd, **tiny_config(sae_dir, features=str(tmp_path / "cat")))
    by_config = SAeUron.from_config(config, pipe=tiny_sd)
    images = [t.generate(["a cat"], seed=0)[0] for t in (tech, by_keys, by_config)]
    assert all(np.array_equal(np.asarray(images[0]), np.asarray(i)) for i in images[1:])
    with pytest.raises(TypeError, match="from the config"):
        SAeUron(config, multiplier=-5.0)
