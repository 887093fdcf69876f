"""A full disk during every kind of write: one clear line, the last good state intact, no
temporary file left behind, and the run resumes once space is freed.

The disk "fills up" in the middle of a write: the fake writers below put half the bytes
into the temporary file, then fail as the OS does (``OSError(ENOSPC)``; safetensors wraps
it in its own error, whose text is all that says so).
"""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.evaluation import ua_ira_config
from helpers.faults import leftovers
from helpers.shards import planted_features, write_synthetic_shards
from PIL import Image

import saeuron.utils.atomic as atomic
import saeuron.utils.io as io
from saeuron.cli.main import main
from saeuron.eval import parse_eval_config, run_eval
from saeuron.sae import Sae
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.trainer import STATE_DIR, STATE_FILE, TrainConfig, Trainer
from saeuron.utils.errors import DiskFullError, UserError
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    # Tiny models on 2 shared cores: a second OpenMP thread only adds oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Disk:
    """Counts writes of temporary files; from write number ``full_after`` + 1 on (or for a
    file whose name holds ``full_for``), each one writes half its bytes and fails with
    ENOSPC. Both ``None``: the disk has room."""

    def __init__(self) -> None:
        self.full_after: int | None = None
        self.full_for: str | None = None
        self.writes = 0
        self.seen: list[str] = []

    def full(self, path: object) -> bool:
        self.writes += 1
        self.seen.append(Path(str(path)).name)
        if self.full_for is not None and self.full_for in str(path):
            return True
        return self.full_after is not None and self.writes > self.full_after


def _enospc(path: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.fixture
def disk(monkeypatch) -> Disk:
    disk = Disk()
    write_bytes, write_text, save = Path.write_bytes, Path.write_text, Image.Image.save
    save_file = io.save_file

    def half(path: Path, data: bytes) -> None:
        write_bytes(path, data[: len(data) // 2])
        raise _enospc(path)

    def fake_write_bytes(self: Path, data: Any) -> int:
        if self.suffix == ".tmp" and disk.full(self):
            half(self, bytes(data))
        return write_bytes(self, data)

    def fake_write_text(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        if self.suffix == ".tmp" and disk.full(self):
            half(self, data.encode())
        return write_text(self, data, *args, **kwargs)

    def fake_save(self: Image.Image, fp: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(fp, Path) and fp.suffix == ".tmp" and disk.full(fp):
            half(fp, b"\x89PNG" * 64)
        save(self, fp, *args, **kwargs)

    def fake_save_file(tensors: Any, filename: str, *args: Any, **kwargs: Any) -> None:
        if disk.full(filename):
            write_bytes(Path(filename), b"\0" * 100)
            raise RuntimeError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                '"No space left on device" })'
            )
        save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", fake_write_bytes)
    monkeypatch.setattr(Path, "write_text", fake_write_text)
    monkeypatch.setattr(Image.Image, "save", fake_save)
    monkeypatch.setattr(io, "save_file", fake_save_file)
    return disk


def _refused(call: Callable[[], object], path: Path) -> DiskFullError:
    with pytest.raises(DiskFullError) as caught:
        call()
    message = str(caught.value)
    assert isinstance(caught.value, UserError) and "\n" not in message
    assert message.startswith(str(path)) and "no space left on device" in message
    return caught.value


# -- the atomic writers ---------------------------------------------------------------------------


def test_json_and_safetensors_writes_keep_the_previous_file(tmp_path: Path, disk: Disk) -> None:
    report = tmp_path / "out" / "report.json"
    atomic_write_json(report, {"UA": 0.5})
    weights = tmp_path / "out" / "w.safetensors"
    atomic_write_safetensors(weights, {"w": torch.ones(3)})
    before = {p: p.read_bytes() for p in (report, weights)}
    disk.full_after = 0
    _refused(lambda: atomic_write_json(report, {"UA": 1.0}), report)
    _refused(lambda: atomic_write_safetensors(weights, {"w": torch.zeros(3)}), weights)
    assert {p: p.read_bytes() for p in (report, weights)} == before
    assert leftovers(tmp_path) == []


def test_a_full_disk_while_creating_the_temporary_file(tmp_path: Path, monkeypatch) -> None:
    def no_inode(*args: object, **kwargs: object) -> None:
        raise _enospc(tmp_path)

    monkeypatch.setattr(atomic.tempfile, "mkstemp", no_inode)
    _refused(lambda: atomic_write_json(tmp_path / "a.json", {}), tmp_path / "a.json")


def test_other_os_errors_keep_their_own_type(tmp_path: Path, monkeypatch) -> None:
    def denied(self: Path, data: str, *args: Any, **kwargs: Any) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "write_text", denied)
    with pytest.raises(PermissionError):
        atomic_write_json(tmp_path / "a.json", {})
    assert leftovers(tmp_path) == []


# -- capture shards ------------------------------------------------------------------------------


def test_capture_stops_with_one_line_and_resumes(tmp_path: Path, disk: Disk) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na red car\nthe sea\n")
    cfg = CacheConfig(
        model="tiny-sd", hookpoint=HOOK, prompts=str(prompts), out=str(tmp_path / "acts"),
        num_inference_steps=2, batch_size=2, max_shard_mb=0.01, dtype="float32",
    )  # fmt: skip
    disk.full_for = "shard_00001.safetensors"  # the first shard fits, the second does not
    _refused(lambda: run_cache(cfg), tmp_path / "acts" / "shard_00001.safetensors")
    first = tmp_path / "acts" / "shard_00000.safetensors"
    content = first.read_bytes()
    assert not (tmp_path / "acts" / "shard_00001.json").exists()
    assert not (tmp_path / "acts" / "manifest.json").exists()
    assert leftovers(tmp_path) == []

    disk.full_for = None  # space freed
    manifest = run_cache(cfg)
    assert len(manifest["shards"]) >= 2 and first.read_bytes() == content


# -- training checkpoints ------------------------------------------------------------------------


def test_training_checkpoint_keeps_the_last_epoch_and_resumes(tmp_path: Path, disk: Disk) -> None:
    x, _ = planted_features(1200, d=16, n_features=16, active=2, seed=1)
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=400)
    cfg = TrainConfig(
        activations=str(acts), out=str(tmp_path / "sae"), k=4, expansion_factor=2,
        batch_size=256, epochs=2, heldout_fraction=0.2, device="cpu",
    )  # fmt: skip
    state_dir = tmp_path / "sae" / HOOK / STATE_DIR
    disk.full_for = "state-epoch0002"  # epoch 1's checkpoint fits, epoch 2's does not
    with pytest.raises(DiskFullError, match=r"state-epoch0002\.safetensors: no space left"):
        Trainer(cfg).train()
    assert leftovers(tmp_path) == []
    state = json.loads((state_dir / STATE_FILE).read_text())
    assert state["epochs_done"] == 1 and (state_dir / state["tensors"]).is_file()
    assert Sae.load_from_disk(tmp_path / "sae" / HOOK).meta["training"]["epochs_done"] == 1

    disk.full_for = None  # space freed: the run goes on from epoch 1
    Trainer(cfg).train()
    assert json.loads((state_dir / STATE_FILE).read_text())["epochs_done"] == 2
    assert leftovers(tmp_path) == []


# -- eval images and metrics ---------------------------------------------------------------------


def test_eval_images_stop_cleanly_and_the_run_resumes(tmp_path: Path, colour, disk: Disk) -> None:
    fresh = run_eval(parse_eval_config(ua_ira_config(tmp_path, "fresh")))
    cfg = parse_eval_config(ua_ira_config(tmp_path, "full"))
    disk.writes, disk.full_after = 0, 20
    with pytest.raises(DiskFullError, match=r"\.png: no space left on device"):
        run_eval(cfg)
    images = tmp_path / "full" / "ua_ira" / "images"
    assert 0 < len(list(images.glob("*.png"))) <= 20
    assert leftovers(tmp_path) == [] and not (tmp_path / "full" / "report.json").exists()
    disk.full_after = None
    assert run_eval(cfg)["metrics"] == fresh["metrics"]


def test_eval_metrics_keep_the_previous_report(
    tmp_path: Path, colour, disk: Disk, capsys
) -> None:
    raw = ua_ira_config(tmp_path)
    cfg_path = tmp_path / "eval.json"
    cfg_path.write_text(json.dumps(raw))
    assert main(["eval", "-c", str(cfg_path)]) == 0
    report = tmp_path / "run" / "report.json"
    before = report.read_bytes()
    disk.writes, disk.full_after = 0, 0
    capsys.readouterr()
    code = main(["eval", "-c", str(cfg_path)])
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]  # progress bars aside
    assert code == 2 and len(errors) == 1 and errors[0].startswith("saeuron eval: error: "), err
    assert "no space left on device" in errors[0] and "Traceback" not in err
    assert report.read_bytes() == before and leftovers(tmp_path) == []


def test_a_hub_download_cut_by_a_full_disk_is_one_line_naming_the_cache(
    tmp_path: Path, monkeypatch
) -> None:
    import saeuron.utils.hub as hub

    def download(repo_id: str, **kwargs: Any) -> str:
        (tmp_path / "blob.incomplete").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hub, "snapshot_download", download)
    monkeypatch.setattr(hub, "usable_offline", lambda *a, **k: False)
    with pytest.raises(DiskFullError) as err:
        hub.snapshot("someone/sae", "SAE", cache_dir=str(tmp_path))
    message = str(err.value)
    assert "someone/sae" in message and str(tmp_path) in message and "\n" not in message
    # Other failures pass through unchanged.
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        hub.snapshot("someone/sae", "SAE")
