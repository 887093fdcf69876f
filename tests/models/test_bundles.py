"""Bundles are data: found by name or folder, read from bundle.json, never named in code."""

from __future__ import annotations

import json

import pytest

from saeuron.minicanvas.assets import minicanvas_bundle, write_bundle
from saeuron.models.bundles import Bundle, bundle_names, find_bundle
from saeuron.models.defaults import model_defaults
from saeuron.models.resolve import resolve_model
from saeuron.models.sampling import SamplingConfig
from saeuron.utils.errors import FileFormatError

OBJECTS_BLOCK = "unet.up_blocks.1.attentions.1"
STYLES_BLOCK = "unet.up_blocks.1.attentions.2"


def test_the_shipped_bundle_describes_itself() -> None:
    bundle = find_bundle("minicanvas")
    assert bundle is not None and bundle.shipped and "minicanvas" in bundle_names()
    assert bundle.hookpoint_for("moon") == OBJECTS_BLOCK
    assert bundle.hookpoint_for(" Neon ") == STYLES_BLOCK
    assert bundle.hookpoint_for("a red balloon") == bundle.default_hookpoint == OBJECTS_BLOCK
    assert bundle.features_path("moon") == bundle.folder / "features" / OBJECTS_BLOCK / "moon"
    assert bundle.features_path("a red balloon") is None
    # A concept is free text: a path out of the folder or a name too long to stat is not one
    # of the shipped features (it is computed on the fly, or refused by the caller's checks).
    escape = f"../../features/{OBJECTS_BLOCK}/moon"
    reached = bundle.folder / "features" / OBJECTS_BLOCK / escape
    assert reached.with_suffix(".safetensors").exists()
    for name in (escape, "x" * 500, ".hidden", "a\\b", ""):
        assert bundle.features_path(name) is None, name
    assert set(bundle.kinds()) == {"object", "style"}
    # What the file says is what the recipe writes.
    assert bundle.to_dict() == minicanvas_bundle(bundle.folder).to_dict()


def test_a_folder_or_a_bundle_root_makes_any_bundle_known(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    write_bundle(folder)
    by_path = find_bundle(str(folder))
    assert by_path is not None and by_path.folder == folder and not by_path.shipped
    assert find_bundle("mine") is None
    monkeypatch.setenv("SAEURON_BUNDLES", str(tmp_path))
    assert find_bundle("mine").folder == folder and "mine" in bundle_names()
    (folder / "bundle.json").write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(FileFormatError, match="bundle.json: not a valid bundle"):
        Bundle.read(folder)


def test_sampling_defaults_follow_the_model() -> None:
    minicanvas = resolve_model("minicanvas")
    assert model_defaults(minicanvas).num_inference_steps == 20
    sd14 = resolve_model("CompVis/stable-diffusion-v1-4")
    assert model_defaults(sd14).sae == "bcywinski/SAeUron_coco"
    assert model_defaults(resolve_model("stabilityai/sdxl-turbo")).guidance_scale == 0.0
    assert model_defaults(resolve_model("someone/else")).source == "fallback"
    assert SamplingConfig().resolved(minicanvas).steps == 20
    assert SamplingConfig().resolved(resolve_model("tiny-sd")).steps == 50
    assert SamplingConfig(num_inference_steps=7).resolved(minicanvas).steps == 7


def tiny_bundle(folder, tiny_sd):
    """A bundle of the tiny random pipeline, one SAE and one concept's features."""
    import torch

    from saeuron.erasure.features import ConceptFeatures
    from saeuron.models.bundles import BundleConcept
    from saeuron.sae import Sae, SaeConfig

    tiny_sd.save_pretrained(folder)
    torch.manual_seed(1)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta.update(hookpoint=OBJECTS_BLOCK, model="tiny")
    sae.save_pretrained(folder / "saes")
    ConceptFeatures.from_latents(
        "cat", list(range(0, 128, 4)), meta={"hookpoint": OBJECTS_BLOCK, "multiplier": -30.0}
    ).save(folder / "features" / OBJECTS_BLOCK / "cat")
    bundle = Bundle(
        name="tiny", folder=folder, num_inference_steps=3, guidance_scale=7.5,
        default_hookpoint=OBJECTS_BLOCK, concepts={"cat": BundleConcept("animal", OBJECTS_BLOCK)},
        default_prompt="a cat", default_concept="cat", license="mit",
    )  # fmt: skip
    (folder / "bundle.json").write_text(json.dumps(bundle.to_dict()), encoding="utf-8")
    return bundle


def test_a_bundle_pushed_to_the_hub_is_pulled_and_used_by_its_repo_id(
    tmp_path, monkeypatch, tiny_sd, capsys
) -> None:
    import numpy as np
    from helpers.hub import FakeHub

    from saeuron.cli.main import main
    from saeuron.erasure.technique import SAeUron
    from saeuron.utils.cards import read_card_metadata

    hub = FakeHub(tmp_path / "hub").install(monkeypatch)
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "user"))
    tiny_bundle(tmp_path / "tiny", tiny_sd)
    assert main(["hub", "push", str(tmp_path / "tiny"), "me/tiny"]) == 0
    assert "pushed bundle" in capsys.readouterr().out
    files = hub.files("me/tiny")
    for name in ("README.md", "bundle.json", "model_index.json", f"saes/{OBJECTS_BLOCK}/cfg.json",
                 f"features/{OBJECTS_BLOCK}/cat.safetensors", "unet/config.json"):  # fmt: skip
        assert name in files, name
    card = (hub.remote / "me/tiny" / "README.md").read_text(encoding="utf-8")
    assert "saeuron hub pull me/tiny" in card and "- animal (at `" in card
    assert read_card_metadata(hub.remote / "me/tiny" / "README.md")["pipeline_tag"] == (
        "text-to-image"
    )

    # Not pulled yet: the id names nothing (and nothing asked the network).
    assert find_bundle("me/tiny") is None
    assert main(["hub", "pull", "me/tiny"]) == 0
    pulled = find_bundle("me/tiny")
    assert pulled is not None and pulled.folder == hub.cache / "me/tiny"
    assert model_defaults(resolve_model("me/tiny")).num_inference_steps == 3
    tech = SAeUron(erase_concept="cat", model="me/tiny", device="cpu")
    assert tech.multiplier == -30.0 and tech.hookpoint == OBJECTS_BLOCK
    erased = np.asarray(tech.generate(["a cat"], seed=0)[0])
    plain = np.asarray(tech.generate(["a cat"], seed=0, erase_concept=False)[0])
    assert not np.array_equal(erased, plain)


def test_a_name_no_file_system_can_hold_is_no_bundle() -> None:
    # Model and SAE names are free text from configs: too long a name, or one with a NUL,
    # is simply not a bundle (the caller then names what is wrong with it), never an OSError.
    assert find_bundle("x" * 500) is None
    assert find_bundle("a\0b") is None
