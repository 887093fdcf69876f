"""Capture folders: checksums in sidecars and manifest, verified reads, remote folders."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
import torch
from helpers.shards import planted_features, write_synthetic_shards
from safetensors.torch import load_file, save_file

from saeuron.training.shards import (
    ActivationShards,
    decode,
    finished_shards,
    write_manifest,
)
from saeuron.training.trainer import TrainConfig, Trainer
from saeuron.utils.errors import FileFormatError
from saeuron.utils.storage import Folder


@pytest.fixture
def memory_url() -> Iterator[str]:
    root = f"saeuron-test-{uuid.uuid4().hex}"
    yield f"memory://{root}/acts"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{root}"):
        fs.rm(f"/{root}", recursive=True)


@pytest.fixture
def capture(tmp_path: Path) -> Path:
    x, _ = planted_features(2000, d=8, n_features=16, active=2, seed=0)
    return write_synthetic_shards(tmp_path / "acts", x, shard_tokens=500)


def flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_sidecars_and_manifest_carry_checksums(capture: Path) -> None:
    manifest = json.loads((capture / "manifest.json").read_text())
    assert len(manifest["shards"]) == 4
    for entry in manifest["shards"]:
        shard = capture / f"shard_{entry['index']:05d}.safetensors"
        data = shard.read_bytes()
        assert entry["bytes"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        sidecar = json.loads((capture / f"shard_{entry['index']:05d}.json").read_text())
        assert sidecar == entry


def test_decode_is_a_view_of_the_buffer(tmp_path: Path) -> None:
    tensors = {
        "activations": torch.randn(7, 3).half(),
        "step": torch.arange(7, dtype=torch.int16),
        "prompt": torch.arange(7, dtype=torch.int32),
        "empty": torch.zeros(0, 3),
    }
    save_file(tensors, str(tmp_path / "s.safetensors"))
    buf = bytearray((tmp_path / "s.safetensors").read_bytes())
    got = decode(buf, tuple(tensors), "s")
    for key, tensor in load_file(str(tmp_path / "s.safetensors")).items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key
    # No copy: writing the buffer changes the tensor.
    before = got["prompt"].clone()
    base = 8 + int.from_bytes(buf[:8], "little")
    header = json.loads(buf[8:base])
    start = base + header["prompt"]["data_offsets"][0]
    buf[start : start + 4] = (99).to_bytes(4, "little")
    assert int(got["prompt"][0]) == 99 and torch.equal(got["prompt"][1:], before[1:])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:5], "too short"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "bad header length"),
        (lambda b: b[:8] + b"x" * (len(b) - 8), "unreadable header"),
    ],
)
def test_decode_refuses_garbage(tmp_path: Path, damage: object, message: str) -> None:
    save_file({"activations": torch.zeros(2, 2)}, str(tmp_path / "s.safetensors"))
    data = damage((tmp_path / "s.safetensors").read_bytes())  # type: ignore[operator]
    with pytest.raises(FileFormatError, match=message):
        decode(bytearray(data), ("activations",), "s")
    with pytest.raises(FileFormatError, match="no tensor 'step'"):
        decode(bytearray((tmp_path / "s.safetensors").read_bytes()), ("step",), "s")


def test_a_corrupt_shard_is_named_when_read(capture: Path) -> None:
    flip_byte(capture / "shard_00002.safetensors")
    data = ActivationShards(capture)  # same size: found only by the checksum
    for shard in data.shards[:2]:
        data.load(shard)
    with pytest.raises(FileFormatError) as err:
        data.load(data.shards[2])
    message = str(err.value)
    assert err.value.path == str(capture / "shard_00002.safetensors")
    assert "SHA-256" in message and "saeuron cache" in message and "\n" not in message


def test_a_truncated_or_missing_shard_is_refused_on_open(capture: Path) -> None:
    shard = capture / "shard_00001.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[:-100])
    with pytest.raises(FileFormatError, match=f"{len(data) - 100} bytes, manifest.json records "
                       f"{len(data)}") as err:
        ActivationShards(capture)
    assert err.value.path == str(shard)
    shard.unlink()
    with pytest.raises(FileFormatError, match="is missing") as err:
        ActivationShards(capture)
    assert err.value.path == str(shard)


def test_each_shard_is_hashed_on_its_first_read_only(
    capture: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = ActivationShards(capture)
    hashed: list[str] = []
    real = Folder.read_verified

    def spy(self: Folder, name: str, size: int | None = None, sha256: str | None = None):
        if sha256 is not None:
            hashed.append(name)
        return real(self, name, size, sha256)

    monkeypatch.setattr(Folder, "read_verified", spy)
    for _ in range(3):
        for shard in data.shards:
            data.read(shard)
    assert hashed == [s.file for s in data.shards]


def test_captures_without_checksums_still_read(
    capture: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = json.loads((capture / "manifest.json").read_text())
    for entry in manifest["shards"]:
        del entry["sha256"], entry["bytes"]
    (capture / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="saeuron"):
        data = ActivationShards(capture)
    assert "4 shards have no checksum" in caplog.text
    assert data.load(data.shards[0]).shape == (500, 8)


def test_remote_capture_reads_like_a_local_one(capture: Path, memory_url: str) -> None:
    x, _ = planted_features(2000, d=8, n_features=16, active=2, seed=0)
    url = write_synthetic_shards(memory_url, x, shard_tokens=500)
    assert url == memory_url
    local, remote = ActivationShards(capture), ActivationShards(url)
    assert remote.manifest == local.manifest
    assert remote.dtype == local.dtype == torch.float16
    for a, b in zip(local.shards, remote.shards):
        assert b.path == f"{memory_url}/shard_{a.index:05d}.safetensors"
        for key in ("activations", "step", "prompt"):
            assert torch.equal(local.load(a, key), remote.load(b, key))
    assert [s.index for s in finished_shards(Folder(url))] == [0, 1, 2, 3]
    assert write_manifest(url, {k: v for k, v in local.manifest.items()
                                if k not in ("shards", "n_tokens")}) == local.manifest


def test_a_corrupt_remote_shard_is_named(memory_url: str) -> None:
    x, _ = planted_features(1000, d=8, n_features=16, active=2, seed=0)
    url = write_synthetic_shards(memory_url, x, shard_tokens=500)
    folder = Folder(url)
    data = bytearray(folder.read_bytes("shard_00001.safetensors"))
    data[-3] ^= 0x01
    folder.write_bytes("shard_00001.safetensors", data)
    shards = ActivationShards(url)
    with pytest.raises(FileFormatError) as err:
        shards.load(shards.shards[1])
    assert err.value.path == f"{url}/shard_00001.safetensors"


def test_training_streams_a_remote_capture(
    memory_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, _ = planted_features(4000, d=8, n_features=16, active=2, seed=3)
    url = write_synthetic_shards(memory_url, x, shard_tokens=400)
    local = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=400)
    settings = dict(k=2, expansion_factor=2, batch_size=200, epochs=2, heldout_fraction=0.1,
                    device="cpu", shuffle_shards=2)  # fmt: skip
    reference = Trainer(TrainConfig(activations=str(local), out=str(tmp_path / "a"), **settings))
    reference.train()

    events: list[str] = []
    real_read, real_step = Folder.read_verified, Trainer.step

    def read(self: Folder, name: str, *args: object, **kwargs: object) -> bytearray:
        events.append(name)
        return real_read(self, name, *args, **kwargs)  # type: ignore[arg-type]

    def step(self: Trainer, batch: torch.Tensor) -> object:
        events.append("step")
        return real_step(self, batch)

    monkeypatch.setattr(Folder, "read_verified", read)
    monkeypatch.setattr(Trainer, "step", step)
    remote = Trainer(TrainConfig(activations=url, out=str(tmp_path / "b"), **settings))
    remote.train()
    # The same SAE as from the local copy ...
    for name, tensor in reference.sae.state_for_disk().items():
        assert torch.equal(remote.sae.state_for_disk()[name], tensor), name
    # ... trained while the shards stream in: the first step comes after two shards (one
    # shuffle group), long before the last of the nine training shards is read.
    first_step = events.index("step")
    assert first_step == 2
    reads_per_epoch = 9 + 1  # training shards + the held-out one
    assert sum(e != "step" for e in events) == 2 * reads_per_epoch
    log = json.loads((tmp_path / "b" / remote.hookpoint / "train_log.json").read_text())
    assert log["activations"] == url
