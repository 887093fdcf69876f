"""``saeuron hub push | pull`` on a hub faked in a local folder (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.hub import FakeHub

from saeuron.cli.main import main
from saeuron.erasure.features import ConceptFeatures
from saeuron.minicanvas.assets import write_bundle
from saeuron.models.bundles import find_bundle
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.cards import read_card_metadata

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "user"))
    return FakeHub(tmp_path / "hub").install(monkeypatch)


def one_line_error(capsys: pytest.CaptureFixture[str], code: int, *fragments: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err, err
    assert err.startswith("saeuron hub: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


def test_push_saes_writes_a_card_and_the_repo_loads_back(tmp_path, hub, capsys) -> None:
    sae = Sae(SaeConfig(d_in=8, expansion_factor=4, k=3))
    with torch.no_grad():
        sae.encoder.bias.normal_(0, 0.1)
    sae.meta.update(model="owner/base", training={"heldout_fvu": 0.125, "tokens": 1024})
    sae.save_pretrained(tmp_path / "saes", HOOK)
    (tmp_path / "saes" / "README.md").unlink()  # the push writes the card itself

    code = main(["hub", "push", str(tmp_path / "saes"), "me/saes", "--license", "apache-2.0"])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pushed saes {tmp_path / 'saes'} to me/saes: https://hub.example/")
    assert hub.files("me/saes") == [
        "README.md", f"{HOOK}/cfg.json", f"{HOOK}/sae.safetensors", f"{HOOK}/saeuron.json",
    ]  # fmt: skip
    meta = read_card_metadata(hub.remote / "me/saes" / "README.md")
    assert (meta["license"], meta["base_model"]) == ("apache-2.0", "owner/base")
    assert "0.125" in (hub.remote / "me/saes" / "README.md").read_text(encoding="utf-8")
    back = Sae.from_pretrained("me/saes", hookpoint=HOOK)
    assert torch.equal(back.encoder.bias, sae.encoder.bias)
    assert hub.pushes[-1]["repo_id"] == "me/saes"


def test_push_features_and_private_repo(tmp_path, hub, capsys) -> None:
    cat = ConceptFeatures.from_latents(
        "cat", [2, 5], mean=[0.5, 0.25], threshold=0.1,
        meta={"hookpoint": HOOK, "model": "owner/base", "method": "contrastive"},
    )  # fmt: skip
    cat.save_pretrained(tmp_path / "features")
    assert main(["hub", "push", str(tmp_path / "features"), "me/feats", "--private"]) == 0
    assert "pushed features" in capsys.readouterr().out
    assert hub.files("me/feats") == ["README.md", f"{HOOK}/cat.json", f"{HOOK}/cat.safetensors"]
    assert read_card_metadata(hub.remote / "me/feats" / "README.md")["license"] == "mit"
    back = ConceptFeatures.from_pretrained("me/feats", concept="cat")
    assert back.latents() == {2, 5} and torch.equal(back.mean, cat.mean)


def test_push_and_pull_a_bundle(tmp_path, hub, capsys) -> None:
    folder = tmp_path / "mybundle"
    folder.mkdir()
    write_bundle(folder)
    (folder / "model_index.json").write_text("{}", encoding="utf-8")
    assert main(["hub", "push", str(folder), "me/bundle"]) == 0
    assert "pushed bundle" in capsys.readouterr().out
    assert {"README.md", "bundle.json", "model_index.json"} <= set(hub.files("me/bundle"))
    assert find_bundle("me/bundle") is None  # not pulled yet, and no network asked
    assert main(["hub", "pull", "me/bundle"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (
        f"pulled bundle 'minicanvas' to {hub.cache / 'me/bundle'}; use it as --model me/bundle"
    )
    pulled = find_bundle("me/bundle")
    assert pulled is not None and pulled.folder == hub.cache / "me/bundle"


def missing(folder: Path) -> None:
    pass


def nothing_to_publish(folder: Path) -> None:
    folder.mkdir()
    (folder / "notes.txt").write_text("x", encoding="utf-8")


def features_without_json(folder: Path) -> None:
    (folder / HOOK).mkdir(parents=True)
    (folder / HOOK / "cat.safetensors").write_bytes(b"not safetensors")


def unreadable_features(folder: Path) -> None:
    features_without_json(folder)
    (folder / HOOK / "cat.json").write_text(
        json.dumps({"concept": "cat", "hookpoint": HOOK}), encoding="utf-8"
    )


@pytest.mark.parametrize(
    ("make", "fragments"),
    [
        (missing, ("folder: ", "is not a folder")),
        (nothing_to_publish, ("folder: ", "no bundle.json", "nothing saeuron publishes")),
        (features_without_json, ("features: ", "cat.json does not exist")),
        (unreadable_features, ("cat.safetensors",)),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_push_of_a_bad_folder_is_one_line_exit_2_and_uploads_nothing(
    tmp_path, hub, capsys, make, fragments
) -> None:
    folder = tmp_path / "bad"
    make(folder)
    code = main(["hub", "push", str(folder), "me/bad"])
    one_line_error(capsys, code, *fragments)
    assert hub.pushes == [] and not (hub.remote / "me/bad").exists()


def test_pull_of_a_missing_repo_or_a_repo_without_a_bundle(tmp_path, hub, capsys) -> None:
    one_line_error(capsys, main(["hub", "pull", "me/nothing"]), "me/nothing")
    cat = ConceptFeatures.from_latents("cat", [1], mean=[0.5], threshold=0.1,
                                       meta={"hookpoint": HOOK})  # fmt: skip
    cat.push_to_hub("me/feats")
    one_line_error(capsys, main(["hub", "pull", "me/feats"]), "not a saeuron bundle")
