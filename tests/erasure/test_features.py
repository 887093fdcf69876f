"""Concept features on disk and on the hub (a local folder stands in for it)."""

from __future__ import annotations

import pytest
import torch
from helpers.hub import FakeHub

from saeuron.erasure.features import ConceptFeatures, file_stem
from saeuron.utils.cards import read_card_metadata
from saeuron.utils.config import ConfigError

HOOK = "unet.up_blocks.1.attentions.1"


def features(concept: str, latents: list[int], hookpoint: str = HOOK) -> ConceptFeatures:
    return ConceptFeatures.from_latents(
        concept, latents, mean=[0.5] * len(latents), threshold=0.1,
        meta={"hookpoint": hookpoint, "model": "owner/model", "sae": "owner/saes",
              "method": "contrastive", "selected_per_step": [len(latents)], "multiplier": -7.0},
    )  # fmt: skip


def test_save_pretrained_lays_out_hookpoint_and_concept_with_a_card(tmp_path) -> None:
    base = features("Van Gogh", [3, 9]).save_pretrained(tmp_path / "repo")
    features("cat", [1]).save_pretrained(tmp_path / "repo")
    assert base == tmp_path / "repo" / HOOK / "van_gogh"
    card = (tmp_path / "repo" / "README.md").read_text(encoding="utf-8")
    assert "| Van Gogh | `unet.up_blocks.1.attentions.1` | contrastive | 2.0 |" in card
    assert "| cat |" in card and "`owner/saes`" in card and "-7.0" in card
    assert read_card_metadata(tmp_path / "repo" / "README.md")["base_model"] == "owner/model"
    back = ConceptFeatures.from_pretrained(tmp_path / "repo", concept="Van Gogh")
    assert back.concept == "Van Gogh" and back.latents() == {3, 9}
    assert torch.equal(back.threshold, torch.full((1, 2), 0.1))
    with pytest.raises(ConfigError, match="^concept: .*van_gogh"):
        ConceptFeatures.from_pretrained(tmp_path / "repo")  # two concepts: name one
    with pytest.raises(ConfigError, match="^concept:"):
        file_stem("  ")


def test_push_and_pull_fetch_only_the_concept_asked_for(tmp_path, monkeypatch) -> None:
    hub = FakeHub(tmp_path).install(monkeypatch)
    features("cat", [1, 2]).push_to_hub("me/features")
    url = features("dog", [4], "unet.up_blocks.1.attentions.2").push_to_hub("me/features")
    assert url.endswith("/commit/2")
    assert hub.files("me/features") == [
        "README.md",
        "unet.up_blocks.1.attentions.1/cat.json",
        "unet.up_blocks.1.attentions.1/cat.safetensors",
        "unet.up_blocks.1.attentions.2/dog.json",
        "unet.up_blocks.1.attentions.2/dog.safetensors",
    ]
    card = (hub.remote / "me/features" / "README.md").read_text(encoding="utf-8")
    assert "| cat |" in card and "| dog |" in card  # the card lists both pushes
    dog = ConceptFeatures.from_pretrained("me/features", concept="dog")
    assert dog.latents() == {4} and dog.hookpoint == "unet.up_blocks.1.attentions.2"
    fetched = sorted(p.name for p in (hub.cache / "me/features").rglob("*.safetensors"))
    assert fetched == ["dog.safetensors"]
    with pytest.raises(ConfigError, match="^concept:"):
        ConceptFeatures.from_pretrained("me/features", concept="horse")
