"""Bundles are data: found by name or folder, read from bundle.json, never named in code."""

from __future__ import annotations

import json

import pytest

from saeuron.minicanvas.assets import minicanvas_bundle, write_bundle
from saeuron.models.bundles import Bundle, bundle_names, find_bundle
from saeuron.models.defaults import model_defaults
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
    assert model_defaults("minicanvas").num_inference_steps == 20
    assert model_defaults("CompVis/stable-diffusion-v1-4").sae == "bcywinski/SAeUron_coco"
    assert model_defaults("stabilityai/sdxl-turbo").guidance_scale == 0.0
    assert model_defaults("someone/else").source == "fallback"
    assert SamplingConfig().resolved("minicanvas").steps == 20
    assert SamplingConfig().resolved("tiny-sd").steps == 50
    assert SamplingConfig(num_inference_steps=7).resolved("minicanvas").steps == 7
