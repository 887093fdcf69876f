"""Folders on a local disk and on fsspec's memory:// filesystem behave the same."""

from __future__ import annotations

import hashlib
import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import saeuron.utils.storage as storage
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.storage import Folder, check_location, is_url


@pytest.fixture
def memory_url() -> Iterator[str]:
    url = f"memory://saeuron-test-{uuid.uuid4().hex}/folder"
    yield url
    fs = fsspec.filesystem("memory")
    root = url.removeprefix("memory://").split("/")[0]
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture(params=["local", "memory"])
def folder(request: pytest.FixtureRequest, tmp_path: Path, memory_url: str) -> Folder:
    return Folder(tmp_path / "folder" if request.param == "local" else memory_url)


def test_round_trips_and_listing(folder: Folder) -> None:
    assert not folder.exists() and folder.sizes() == {}
    folder.write_bytes("a.bin", b"\x00\x01" * 1000)
    folder.write_json("b.json", {"x": [1, 2], "name": "é"})
    assert folder.exists()
    assert folder.sizes() == {"a.bin": 2000, "b.json": len(folder.read_bytes("b.json"))}
    assert folder.read_bytes("a.bin") == b"\x00\x01" * 1000
    assert folder.read_json("b.json") == {"x": [1, 2], "name": "é"}
    assert folder.read_json_many(["b.json", "b.json"]) == [{"x": [1, 2], "name": "é"}] * 2
    assert folder.read_range("a.bin", 1, 4) == b"\x01\x00\x01"
    assert folder.is_file("a.bin") and not folder.is_file("c.bin")
    assert folder.size("a.bin") == 2000
    folder.remove("a.bin")
    folder.remove("a.bin")  # a missing file is fine
    assert set(folder.sizes()) == {"b.json"}
    with pytest.raises(FileNotFoundError):
        folder.read_bytes("a.bin")


def test_verified_read_checks_size_and_checksum(
    folder: Folder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several chunks, the last one short.
    monkeypatch.setattr(storage, "CHUNK_BYTES", 4096)
    data = bytes(range(256)) * 70
    folder.write_bytes("s.bin", data)
    digest = hashlib.sha256(data).hexdigest()
    assert folder.sha256("s.bin") == (len(data), digest)
    assert folder.read_verified("s.bin", size=len(data), sha256=digest) == data
    assert folder.read_verified("s.bin") == data

    with pytest.raises(FileFormatError, match="17920 bytes, expected 17921") as err:
        folder.read_verified("s.bin", size=len(data) + 1, sha256=digest)
    assert err.value.path == folder.path("s.bin")
    bad = "0" * 64
    with pytest.raises(FileFormatError, match="SHA-256 .* does not match") as err:
        folder.read_verified("s.bin", sha256=bad)
    assert err.value.path == folder.path("s.bin") and "s.bin" in str(err.value)


def test_bad_json_names_the_file(folder: Folder) -> None:
    folder.write_bytes("m.json", b"{not json")
    with pytest.raises(FileFormatError) as err:
        folder.read_json("m.json")
    assert err.value.path == folder.path("m.json")


def test_a_failed_remote_write_leaves_nothing(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Folder(memory_url)
    folder.write_bytes("keep.bin", b"old")

    def broken_move(*args: object, **kwargs: object) -> None:
        raise OSError("connection lost")

    monkeypatch.setattr(folder.fs, "mv", broken_move)
    with pytest.raises(OSError, match="connection lost"):
        folder.write_bytes("keep.bin", b"new")
    with pytest.raises(OSError, match="connection lost"):
        folder.write_bytes("new.bin", b"new")
    # The old file is intact, the new one absent, and no temporary file is left behind.
    assert folder.sizes() == {"keep.bin": 3}
    assert folder.read_bytes("keep.bin") == b"old"


def test_object_stores_upload_under_the_final_name(
    memory_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An object appears only when its upload completes: no temporary name, no second copy.
    monkeypatch.setattr(storage, "_ATOMIC_UPLOADS", frozenset({"memory"}))
    folder = Folder(memory_url)
    targets: list[str] = []
    real = folder.fs.pipe_file
    monkeypatch.setattr(folder.fs, "pipe_file", lambda p, d, **k: (targets.append(p), real(p, d)))
    folder.write_bytes("x.bin", b"abc")
    assert [t.rsplit("/", 1)[-1] for t in targets] == ["x.bin"]
    assert folder.read_bytes("x.bin") == b"abc"


def test_a_failed_local_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Folder(tmp_path)
    folder.write_bytes("f.bin", b"old")
    real = Path.write_bytes

    def half_then_fail(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        folder.write_bytes("f.bin", b"new data")
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
    assert (tmp_path / "f.bin").read_bytes() == b"old"


def test_locations() -> None:
    assert is_url("s3://bucket/acts") and is_url("memory://x") and is_url("hf://datasets/a/b")
    assert not is_url("/data/acts") and not is_url("acts") and not is_url("file:///data/acts")
    assert Folder("file:///tmp/x").path("a") == "/tmp/x/a"
    assert Folder("memory://bucket/acts/").path("a") == "memory://bucket/acts/a"


def test_unknown_protocol_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="Protocol not known") as err:
        check_location("nosuchfs://bucket/acts", "out")
    assert err.value.field == "out"


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is not None, reason="s3fs is installed")
def test_missing_backend_says_what_to_install() -> None:
    with pytest.raises(ConfigError, match="s3fs") as err:
        Folder("s3://bucket/acts", "activations")
    assert err.value.field == "activations"


def test_local_output_folder_checked(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a folder"):
        check_location(tmp_path / "file", "out", write=True)
    check_location(tmp_path / "new" / "folder", "out", write=True)
    check_location(tmp_path / "file", "out")  # reading: checked when read
