"""The recipe format: validation errors, round trips, containment, anchors; a recipe
attached to the tiny pipeline changes its images, and removed (or at strength 0) leaves them
bit-identical."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.recipes import HOOK, build_recipe_folder

from saeuron.erasure.recipe import FORMAT_VERSION, Recipe, resolve_anchors
from saeuron.erasure.recipe_erasure import attach, attach_recipe
from saeuron.utils.errors import ConfigError, FileFormatError


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_sd) -> Path:
    return build_recipe_folder(tmp_path_factory.mktemp("recipe"), tiny_sd)


def _data(folder: Path) -> dict:
    return json.loads((folder / "recipe.json").read_text())


def _sample(pipe, seed: int = 0) -> np.ndarray:
    out = pipe(["a photo of a cat"], num_inference_steps=2, guidance_scale=7.5,
               generator=[torch.Generator("cpu").manual_seed(seed)], output_type="np")  # fmt: skip
    return out.images


def test_load_save_round_trip(folder, tmp_path):
    recipe = Recipe.load(folder)
    assert recipe.names == ["cat", "dog"]
    assert recipe.format_version == FORMAT_VERSION
    assert recipe.check_files() == []
    again = Recipe.from_dict(recipe.to_dict(), root=folder)
    assert again.to_dict() == recipe.to_dict()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(colour="red"), "recipe.colour"),
        (lambda d: d["concepts"]["cat"]["edits"][0].update(rule="melt"), "edits.0.rule"),
        (lambda d: d["concepts"]["cat"]["edits"][0].update(strength=float("nan")), "strength"),
        (lambda d: d["concepts"]["cat"]["edits"][0].update(window=[0.5, 0.2]), "window"),
        (lambda d: d["concepts"]["cat"]["edits"][0].update(activation_site="x"), "site"),
        (lambda d: d["concepts"]["cat"]["edits"][0].update(module="os:system"), "module"),
        (lambda d: d["concepts"]["dog"]["edits"][0].update(anchors=[]), "edits.0"),
        (lambda d: d["concepts"].update(cat={"edits": []}), "concepts.cat.edits"),
        (lambda d: d.pop("base_model"), "base_model"),
    ],
)
def test_bad_recipes_are_refused_naming_the_path(folder, change, field):
    data = _data(folder)
    change(data)
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict(data, root=folder)
    assert field in str(err.value)
    assert "\n" not in str(err.value)


def test_a_newer_format_version_is_refused(folder):
    data = {**_data(folder), "format_version": FORMAT_VERSION + 1}
    with pytest.raises(FileFormatError, match="newer saeuron"):
        Recipe.from_dict(data, root=folder)


def _as_version_1(data: dict) -> dict:
    """``data`` as saeuron wrote it before the guidance rename: format 1, ``cfg_half``."""
    old = copy.deepcopy(data)
    old["format_version"] = 1
    for entry in old["concepts"].values():
        for edit in entry["edits"]:
            edit["cfg_half"] = edit.pop("guidance_half")
    return old


def _every_edit(data: dict, **changes) -> dict:
    data = copy.deepcopy(data)
    for entry in data["concepts"].values():
        for edit in entry["edits"]:
            edit.update(changes)
    return data


def test_a_version_1_recipe_loads_as_version_2(folder, tmp_path):
    # 'both' is not the default: a cfg_half dropped on the way would read as 'cond'.
    new = _every_edit(_data(folder), guidance_half="both")
    copied = tmp_path / "old"
    shutil.copytree(folder, copied)
    (copied / "recipe.json").write_text(json.dumps(_as_version_1(new)))
    recipe = Recipe.load(copied)
    assert recipe.format_version == FORMAT_VERSION == 2
    assert {e.guidance_half for c in recipe.concepts.values() for e in c.edits} == {"both"}
    assert recipe.to_dict() == Recipe.from_dict(new, root=copied).to_dict()
    # Saved again, it is a version-2 file without the old name.
    text = recipe.save(tmp_path / "again.json").read_text()
    assert '"format_version": 2' in text and "cfg_half" not in text


def test_a_version_1_recipe_erases_bit_identically_to_its_version_2_form(folder, tiny_sd):
    new = _every_edit(_data(folder), guidance_half="both")
    images = {}
    for name, data in (("v1", _as_version_1(new)), ("v2", new),
                       ("v2 cond", _every_edit(new, guidance_half="cond"))):  # fmt: skip
        with attach(tiny_sd, Recipe.from_dict(data, root=folder)):
            images[name] = _sample(tiny_sd)
    assert np.array_equal(images["v1"], images["v2"])
    # The setting matters here, so the equality above could have failed.
    assert not np.array_equal(images["v2"], images["v2 cond"])


def test_the_old_name_in_a_version_2_recipe_is_an_unknown_key(folder):
    data = _data(folder)
    data["concepts"]["cat"]["edits"][0]["cfg_half"] = "cond"
    with pytest.raises(ConfigError, match=r"edits\.0\.cfg_half: unknown key"):
        Recipe.from_dict(data, root=folder)


def test_changed_and_missing_files_are_all_named(folder, tmp_path):
    data = _data(folder)
    data["concepts"]["cat"]["edits"][0]["features"]["sha256"] = "0" * 64
    data["concepts"]["dog"]["edits"][0]["features"]["path"] = "features/nowhere/dog"
    problems = Recipe.from_dict(data, root=folder).check_files()
    assert len(problems) == 2
    assert "has changed" in problems[0] and "no file" in problems[1]


def test_a_hub_recipe_may_not_leave_its_folder(folder, tmp_path):
    inside = Recipe.from_dict(_data(folder), root=folder, contained=True)
    assert inside.names == ["cat", "dog"]
    data = _data(folder)
    data["concepts"]["cat"]["edits"][0]["sae"]["path"] = "../elsewhere"
    with pytest.raises(FileFormatError, match="outside"):
        Recipe.from_dict(data, root=folder, contained=True)
    # Through a symbolic link too.
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "features").symlink_to(folder / "features")
    with pytest.raises(FileFormatError, match="outside"):
        Recipe.from_dict(_data(folder), root=linked, contained=True)
    # A local recipe may name local paths.
    assert Recipe.from_dict(data, root=folder).names == ["cat", "dog"]


def test_anchors_resolve_to_the_first_candidate_not_erased(folder):
    recipe = Recipe.load(folder)
    assert [a for _, a in resolve_anchors(recipe, ["dog"])["dog"]] == ["cat"]
    assert [a for _, a in resolve_anchors(recipe, ["dog", "cat"])["dog"]] == ["car"]
    data = _data(folder)
    data["concepts"]["dog"]["edits"][0]["anchors"] = data["concepts"]["dog"]["edits"][0][
        "anchors"][:1]
    alone = Recipe.from_dict(data, root=folder)
    assert [a for _, a in resolve_anchors(alone, ["dog", "cat"])["dog"]] == [None]


def test_attached_recipe_changes_images_and_removal_restores_them(folder, tiny_sd):
    plain = _sample(tiny_sd)
    erasure = attach(tiny_sd, folder / "recipe.json")
    try:
        erased = _sample(tiny_sd)
        assert erasure.edited_tokens > 0
        assert np.abs(erased - plain).max() > 1e-3
        erasure.set_strength("cat", 0.0)
        erasure.set_strength("dog", 0.0)
        assert np.array_equal(_sample(tiny_sd), plain)
        erasure.set_strength("cat", 0.5)
        half = _sample(tiny_sd)
        assert not np.array_equal(half, plain) and not np.array_equal(half, erased)
        with pytest.raises(ConfigError, match="strength.cat"):
            erasure.set_strength("cat", 1.5)
    finally:
        erasure.remove()
    assert np.array_equal(_sample(tiny_sd), plain)


def test_both_concepts_erased_together_use_one_hook(folder, tiny_sd):
    with attach_recipe(tiny_sd, folder / "recipe.json", ["cat", "dog"]) as erasure:
        # dog's anchor (cat) is erased too: it falls to car, in its own hook group.
        assert sorted(e.config.rule for e in erasure.erasures) == ["ablate", "anchor"]
    assert not erasure.erasures


def test_a_pipeline_of_another_shape_is_refused(folder, tiny_sd):
    data = copy.deepcopy(_data(folder))
    data["base_model"]["fingerprint"] = "f" * 64
    recipe = Recipe.from_dict(data, root=folder)
    with pytest.raises(ConfigError, match="recipe.base_model"):
        attach_recipe(tiny_sd, recipe)


def test_an_sae_that_is_not_the_recipes_is_refused(folder, tiny_sd):
    data = _data(folder)
    data["concepts"]["cat"]["edits"][0]["sae"]["fingerprint"] = "0" * 64
    with pytest.raises(FileFormatError, match="not the SAE"):
        attach_recipe(tiny_sd, Recipe.from_dict(data, root=folder), ["cat"])


def test_save_pretrained_makes_a_self_contained_folder(folder, tmp_path):
    written = Recipe.load(folder).save_pretrained(tmp_path / "out")
    copy_ = Recipe.from_dict(json.loads(written.read_text()), root=written.parent,
                             contained=True)  # fmt: skip
    assert copy_.check_files() == []
    assert (written.parent / "README.md").read_text().count("ablate") >= 1
    assert (written.parent / "saes" / HOOK / "sae.safetensors").is_file()


def test_saeuron_erases_with_a_recipe_and_its_sampling(folder, tiny_sd):
    from saeuron.erasure.technique import SAeUron

    plain = _sample(tiny_sd)
    tech = SAeUron.from_recipe(folder / "recipe.json", pipe=tiny_sd)
    assert tech.config.concepts == ["cat", "dog"]
    assert tech.config.sampling.steps == 2  # the recipe's
    assert tech.hookpoint == HOOK and tech.multiplier == -4.0
    erased = np.asarray(tech.generate(["a photo of a cat"], seeds=[0])[0], dtype=np.float32)
    unerased = tech.generate(["a photo of a cat"], seeds=[0], erase_concept=False)[0]
    assert np.array_equal(np.asarray(unerased), (plain[0] * 255).round().astype(np.uint8))
    assert np.abs(erased - np.asarray(unerased, dtype=np.float32)).max() > 1
    only_cat = SAeUron(pipe=tiny_sd, recipe=str(folder / "recipe.json"), erase_concept="cat")
    assert only_cat.config.concepts == ["cat"]
    with pytest.raises(ConfigError, match="not in the recipe"):
        SAeUron(pipe=tiny_sd, recipe=str(folder / "recipe.json"), erase_concept="horse")


def test_generate_writes_every_image_of_a_recipe(folder, tiny_sd, tmp_path, capsys):
    from saeuron.cli.main import main

    model = tmp_path / "model"
    tiny_sd.save_pretrained(model)
    out = tmp_path / "images"
    args = ["generate", "--recipe", str(folder / "recipe.json"), "--model", str(model),
            "--prompt", "a photo of a cat", "--prompt", "a dog", "--num-images", "2",
            "--seed", "3", "--out", str(out), "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "000-3.png", "000-4.png", "001-3.png", "001-4.png"
    ]
    pattern = str(tmp_path / "p" / "{prompt}_{seed}.png")
    assert main([*args[:-4], "--out", pattern, "--device", "cpu", "--erase", "cat"]) == 0
    assert len(list((tmp_path / "p").iterdir())) == 4
    capsys.readouterr()
    assert main([*args[:-4], "--out", str(tmp_path / "one.png"), "--device", "cpu"]) == 2
    assert "folder or a pattern" in capsys.readouterr().err


def test_push_and_pull_through_the_hub(folder, tmp_path, monkeypatch, tiny_sd):
    from helpers.hub import FakeHub

    hub = FakeHub(tmp_path).install(monkeypatch)
    Recipe.load(folder).push_to_hub("me/recipe")
    files = hub.files("me/recipe")
    assert "recipe.json" in files and "README.md" in files
    assert f"saes/{HOOK}/sae.safetensors" in files
    assert f"features/{HOOK}/cat.safetensors" in files
    pulled = Recipe.load("me/recipe")
    assert pulled.names == ["cat", "dog"] and pulled.check_files() == []
    with attach_recipe(tiny_sd, pulled, ["cat"]) as erasure:
        _sample(tiny_sd)
        assert erasure.edited_tokens > 0
    # A pushed recipe that names a path outside its own repository is refused when pulled.
    data = json.loads((hub.remote / "me/recipe" / "recipe.json").read_text())
    data["concepts"]["cat"]["edits"][0]["features"]["path"] = "../../../etc/passwd"
    (hub.remote / "me/recipe" / "recipe.json").write_text(json.dumps(data))
    shutil.rmtree(hub.cache / "me/recipe")
    with pytest.raises(FileFormatError, match="outside"):
        Recipe.load("me/recipe")
