"""Hostile and broken files: each is refused with its reason, before anything trusts it.

Safetensors headers that claim more than the file holds, NaN or Inf weights, an SAE of the
wrong width for the module it hooks, a hub repo of pickles only, and bundles or hub folders
whose paths lead out of themselves (``..``, absolute paths, symlinks).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from helpers.faults import HOOK, bundle_folder
from safetensors.torch import load_file, save_file
from torch import nn

import saeuron.sae.formats as formats
import saeuron.utils.hub as hub
from saeuron.cli.main import main
from saeuron.erasure.concepts.stats import collect_stats
from saeuron.models.bundles import Bundle, find_bundle
from saeuron.models.layout import check_hook_width, read_layout
from saeuron.models.resolve import resolve_model
from saeuron.sae import Sae, SaeConfig
from saeuron.utils.errors import ConfigError, FileFormatError, UserError
from saeuron.utils.tensorfiles import MAX_HEADER_BYTES, check_safetensors


def _raw_safetensors(path: Path, header: dict, data: bytes = b"", header_len: int | None = None):
    text = json.dumps(header).encode()
    length = len(text) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + text + data)
    return path


def _sae_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "sae" / HOOK
    shutil.copytree(bundle_folder() / "saes" / HOOK, folder)
    return folder


# -- safetensors headers -----------------------------------------------------------------------


def test_a_header_claiming_terabytes_is_refused_before_reading(tmp_path: Path) -> None:
    shape = [1_000_000, 1_000_000]
    path = _raw_safetensors(
        tmp_path / "big.safetensors",
        {"W": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * 10**12]}},
        b"\0" * 64,
    )
    with pytest.raises(FileFormatError, match=r"claims bytes up to 4\.0 TB .* 64 B of data"):
        check_safetensors(path)


def test_a_header_length_beyond_the_file_or_huge_is_refused(tmp_path: Path) -> None:
    path = _raw_safetensors(tmp_path / "a.safetensors", {}, header_len=2**62)
    with pytest.raises(FileFormatError, match="the header claims .* but the file holds"):
        check_safetensors(path)
    # A header that is really there but absurdly long (padding a real file to 17 MiB).
    padded = tmp_path / "b.safetensors"
    body = b"{" + b" " * (MAX_HEADER_BYTES + 2**20) + b"}"
    padded.write_bytes(struct.pack("<Q", len(body)) + body)
    with pytest.raises(FileFormatError, match="more than the 16.8 MB any real checkpoint"):
        check_safetensors(padded)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}, "offsets span 8 B"),
        ({"dtype": "X9", "shape": [1], "data_offsets": [0, 1]}, "dtype 'X9'"),
        ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "not a list of sizes"),
        ({"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}, "not a range"),
    ],
)
def test_inconsistent_entries_are_refused(tmp_path: Path, entry: dict, message: str) -> None:
    path = _raw_safetensors(tmp_path / "x.safetensors", {"t": entry}, b"\0" * 16)
    with pytest.raises(FileFormatError, match=message):
        check_safetensors(path)


def test_a_real_file_passes_and_an_sae_claiming_terabytes_is_refused_on_load(
    tmp_path: Path,
) -> None:
    folder = _sae_copy(tmp_path)
    assert set(check_safetensors(folder / "sae.safetensors")) == {
        "encoder.weight", "encoder.bias", "W_dec", "b_dec"
    }  # fmt: skip
    _raw_safetensors(
        folder / "sae.safetensors",
        {"W_dec": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}},
    )
    with pytest.raises(FileFormatError, match="sae.safetensors: not a readable safetensors file"):
        Sae.load_from_disk(folder)


def test_generate_with_a_terabyte_sae_is_one_line_exit_2(
    tmp_path: Path, capsys, forbid_model_loading
) -> None:
    folder = _sae_copy(tmp_path)
    _raw_safetensors(
        folder / "sae.safetensors",
        {"W_dec": {"dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}},
    )
    code = main(["generate", "--model", "minicanvas", "--erase", "moon", "--prompt", "x",
                 "--sae", str(folder.parent), "--hookpoint", HOOK,
                 "--out", str(tmp_path / "o.png")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "4.4 TB" in err and "Traceback" not in err


# -- NaN and Inf weights -----------------------------------------------------------------------


@pytest.mark.parametrize(("tensor", "value"), [("W_dec", float("nan")), ("encoder.bias", "inf")])
def test_non_finite_weights_are_refused_naming_file_and_tensor(
    tmp_path: Path, tensor: str, value: object
) -> None:
    folder = _sae_copy(tmp_path)
    state = load_file(folder / "sae.safetensors")
    state[tensor].view(-1)[0] = float(value)
    save_file(state, str(folder / "sae.safetensors"))
    with pytest.raises(FileFormatError, match=rf"sae\.safetensors: tensor {tensor} holds 1 NaN"):
        Sae.from_pretrained(folder.parent, hookpoint=HOOK)


def test_non_finite_weights_in_a_torch_file_are_refused(tmp_path: Path) -> None:
    n, d = 8, 4
    state = {
        "encoder.weight": torch.zeros(n, d),
        "decoder.weight": torch.zeros(d, n),
        "pre_bias": torch.zeros(d),
        "latent_bias": torch.full((n,), float("-inf")),
    }
    folder = tmp_path / f"{HOOK}_k2_hidden8"
    folder.mkdir()
    torch.save({"state_dict": state}, folder / "state_dict.pth")
    with pytest.raises(FileFormatError, match="state_dict.pth: tensor latent_bias holds 8 NaN"):
        Sae.load_from_disk(folder)


# -- an SAE of another width than its module ---------------------------------------------------


def test_the_width_of_the_hooked_module_is_checked() -> None:
    layout = read_layout(resolve_model("minicanvas"))
    assert layout is not None
    module = layout.module(HOOK)
    assert module is not None
    check_hook_width(module, 96, HOOK)  # MiniCanvas's block: 96 channels
    with pytest.raises(ConfigError, match=f"sae: the SAE reads 32 channels but {HOOK} has 96"):
        check_hook_width(module, 32, HOOK)
    with pytest.raises(ConfigError, match="reads 5 channels but proj has 8"):
        check_hook_width(nn.Linear(4, 8), 5, "proj")
    check_hook_width(nn.Sequential(), 5, "unknown")  # no width to know: nothing refused


# -- pickles only ------------------------------------------------------------------------------


@pytest.fixture
def no_unpickling(monkeypatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(formats.torch, "load", boom)


def _pickle_repo(root: Path) -> Path:
    (root / HOOK).mkdir(parents=True)
    (root / HOOK / "cfg.json").write_text(json.dumps({"d_in": 96, "num_latents": 8, "k": 2}))
    (root / HOOK / "sae.bin").write_bytes(b"\x80\x04 not unpickled")
    (root / "pytorch_model.pt").write_bytes(b"\x80\x04")
    return root


def test_a_folder_of_pickles_only_is_refused_without_unpickling(
    tmp_path: Path, no_unpickling
) -> None:
    root = _pickle_repo(tmp_path / "repo")
    for call in (
        lambda: Sae.from_pretrained(root),
        lambda: Sae.from_pretrained(root, hookpoint=HOOK),
        lambda: Sae.load_from_disk(root / HOOK),
    ):
        with pytest.raises(FileFormatError, match="holds only pickle files .*sae.bin"):
            call()


def test_a_hub_repo_of_pickles_only_is_refused(tmp_path: Path, monkeypatch, no_unpickling) -> None:
    root = _pickle_repo(tmp_path / "cache" / "someone" / "pickles")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(root))
    with pytest.raises(FileFormatError, match="holds only pickle files .*pytorch_model.pt"):
        Sae.from_pretrained("someone/pickles")


# -- paths that escape -------------------------------------------------------------------------


def _bundle(root: Path, **fields: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    data = json.loads((bundle_folder() / "bundle.json").read_text())
    data.update(fields)
    (root / "bundle.json").write_text(json.dumps(data))
    return root


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"saes": "../../outside"}, "saes is '../../outside'; it must be a path inside"),
        ({"features": "/etc"}, "features is '/etc'"),
        ({"classifier": "C:\\Windows"}, "classifier is"),
        ({"supervised": "a/../../b"}, "supervised is"),
    ],
)
def test_a_bundle_naming_paths_outside_itself_is_refused(
    tmp_path: Path, fields: dict, message: str
) -> None:
    folder = _bundle(tmp_path / "b", **fields)
    with pytest.raises(FileFormatError, match=message):
        Bundle.read(folder)


def test_a_bundle_reaching_out_through_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    folder = _bundle(tmp_path / "b", saes="saes")
    (folder / "saes").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(FileFormatError, match="leads through a symlink to .*elsewhere"):
        Bundle.read(folder)
    # The same bundle with its own folder there reads.
    (folder / "saes").unlink()
    (folder / "saes").mkdir()
    assert Bundle.read(folder).saes == "saes"


def test_a_hub_download_linking_outside_itself_is_refused(tmp_path: Path, monkeypatch) -> None:
    secret = tmp_path / "home" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("private")
    repo = tmp_path / "cache" / "models--o--n"
    snap = repo / "snapshots" / "abc"
    (snap / "sub").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "blobs" / "1234").write_text("{}")
    # What the Hugging Face cache does itself: links into the repo's blobs are fine.
    (snap / "cfg.json").symlink_to(repo / "blobs" / "1234")
    monkeypatch.setattr(hub, "snapshot_download", lambda repo_id, **kw: str(snap))
    assert hub.snapshot("o/n", what="SAE") == snap
    (snap / "sub" / "cfg.json").symlink_to(secret)
    with pytest.raises(FileFormatError, match="this SAE 'o/n' links to .*secret.txt, outside"):
        hub.snapshot("o/n", what="SAE")
    with pytest.raises(UserError, match="outside"):
        hub.local_snapshot("o/n", what="model")


def test_a_cached_hub_bundle_linking_outside_is_refused(tmp_path: Path, monkeypatch) -> None:
    snap = tmp_path / "hub" / "models--o--b" / "snapshots" / "abc"
    _bundle(snap)
    (snap / "model_index.json").write_text("{}")
    (snap / "saes").mkdir()
    (tmp_path / "elsewhere.txt").write_text("private")
    monkeypatch.setattr(hub, "try_to_load_from_cache", lambda repo, name, **kw: str(snap / name))
    assert find_bundle("o/b") is not None  # a bundle of its own files is found
    (snap / "saes" / "cfg.json").symlink_to(tmp_path / "elsewhere.txt")
    with pytest.raises(FileFormatError, match="this bundle 'o/b' links to .*elsewhere.txt"):
        find_bundle("o/b")


def test_statistics_refuse_an_sae_of_another_width_before_sampling(tiny_sd) -> None:
    # Features computed on the fly meet the module here (erasing does in erase.attach).
    narrow = Sae(SaeConfig(d_in=8, expansion_factor=2, k=2))
    with pytest.raises(ConfigError, match=f"sae: the SAE reads 8 channels but {HOOK} has 32"):
        collect_stats(tiny_sd, narrow, ["a cat"], concept="cat", hookpoint=HOOK,
                      num_inference_steps=2, progress=False)  # fmt: skip


def test_generate_with_a_nan_in_the_decoder_refuses_and_writes_no_image(
    tmp_path: Path, capsys
) -> None:
    # The case: a shipped SAE with one NaN, a concept whose features are computed on
    # the fly with it. The model loads (the SAE's header is fine); the SAE's weights refuse.
    folder = _sae_copy(tmp_path)
    state = load_file(folder / "sae.safetensors")
    state["W_dec"][3, 5] = float("nan")
    save_file(state, str(folder / "sae.safetensors"))
    out = tmp_path / "zebra.png"
    code = main(["generate", "--model", "minicanvas", "--sae", str(folder.parent),
                 "--hookpoint", HOOK, "--erase", "zebra", "--prompt", "a zebra",
                 "--num-inference-steps", "2", "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert "sae.safetensors: tensor W_dec holds 1 NaN or Inf value" in errors[0]
    assert not out.exists()
