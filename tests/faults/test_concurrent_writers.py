"""Two processes writing one capture, training or eval folder: the second refuses at once,
in one line naming the first's pid and command, and the first finishes undisturbed.

The first writer is a real process (forked from this one, so it shares the tiny models and
the stand-in eval technique) paused in the middle of its first write; the second is the
command run here. A killed holder leaves nothing that blocks the next run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.evaluation import ua_ira_config
from helpers.shards import planted_features, write_synthetic_shards

import saeuron.eval.runner as runner
import saeuron.training.capture as capture
import saeuron.utils.locks as locks
from saeuron.cli.main import main
from saeuron.training.trainer import Trainer
from saeuron.utils.errors import DiskFullError
from saeuron.utils.locks import HOLDER_FILE, LOCK_FILE, FolderBusyError, FolderLock

HOOK = "unet.up_blocks.1.attentions.1"
FORK = multiprocessing.get_context("fork")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    # Forked children and 2 shared cores: one OpenMP thread each, no oversubscription.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Holder:
    """A forked process that runs ``saeuron ARGV`` and pauses at the first call of
    ``owner.name`` (until released), so it holds its folder while the test runs another."""

    def __init__(self, argv: list[str], owner: Any, name: str, monkeypatch: Any):
        self.argv = argv
        self.paused, self.go_on = FORK.Event(), FORK.Event()
        real = getattr(owner, name)

        def pause_once(*args: Any, **kwargs: Any) -> Any:
            if not self.paused.is_set():
                self.paused.set()
                self.go_on.wait(120)
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, pause_once)
        self.process = FORK.Process(target=self._run)

    def _run(self) -> None:
        sys.argv = ["saeuron", *self.argv]
        os._exit(main(self.argv))

    def __enter__(self) -> Holder:
        self.process.start()
        assert self.paused.wait(120), "the first writer never reached its first write"
        return self

    def finish(self) -> int:
        self.go_on.set()
        self.process.join(120)
        return self.process.exitcode

    def __exit__(self, *exc: object) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


def _refused(argv: list[str], holder: Holder, capsys: Any) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if "error" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert f"pid {holder.process.pid} (saeuron {argv[0]} " in errors[0], errors[0]
    assert "is being written by" in errors[0]
    return errors[0]


def _no_lock_left(folder: Path) -> None:
    assert not (folder / LOCK_FILE).exists() and not (folder / HOLDER_FILE).exists()


# -- the lock itself ---------------------------------------------------------------------------


def _hold(folder: Path, ready: Any, done: Any) -> None:
    sys.argv = ["saeuron", "train", "--out", str(folder)]
    with FolderLock(folder):
        ready.set()
        done.wait(60)


def _holding(folder: Path) -> tuple[Any, Any, Any]:
    ready, done = FORK.Event(), FORK.Event()
    process = FORK.Process(target=_hold, args=(folder, ready, done))
    process.start()
    assert ready.wait(60)
    return process, ready, done


def test_a_held_folder_is_refused_and_free_again_after(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    process, _, done = _holding(folder)
    with pytest.raises(FolderBusyError, match=rf"pid {process.pid} \(saeuron train --out "):
        FolderLock(folder).acquire()
    done.set()
    process.join(60)
    assert process.exitcode == 0
    _no_lock_left(folder)
    with FolderLock(folder):
        with FolderLock(folder):  # re-entrant in one process
            pass
        assert (folder / HOLDER_FILE).is_file()
    _no_lock_left(folder)


def test_a_killed_holder_does_not_block_the_next_run(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    process, _, _ = _holding(folder)
    os.kill(process.pid, signal.SIGKILL)
    process.join(60)
    assert (folder / HOLDER_FILE).is_file()  # its record stays behind...
    with FolderLock(folder):  # ...but the OS dropped its lock
        assert f'"pid": {os.getpid()}' in (folder / HOLDER_FILE).read_text()
    _no_lock_left(folder)


def test_a_refused_lock_leaves_a_new_folder_uncreated(tmp_path: Path) -> None:
    lock = FolderLock(tmp_path / "new")
    with lock:
        pass
    assert not (tmp_path / "new").exists()


# -- the three writers ---------------------------------------------------------------------------


def _run_twice(
    argv: list[str], owner: Any, name: str, monkeypatch: Any, capsys: Any, folder: Path,
    check: Callable[[], None],
) -> str:  # fmt: skip
    with Holder(argv, owner, name, monkeypatch) as holder:
        message = _refused(argv, holder, capsys)
        assert holder.finish() == 0
    check()
    _no_lock_left(folder)
    return message


def test_two_captures_into_one_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\na red car\nthe sea\n")
    out = tmp_path / "acts"
    argv = ["cache", "--model", "tiny-sd", "--hookpoint", HOOK, "--prompts", str(prompts),
            "--out", str(out), "--num-inference-steps", "2", "--batch-size", "2"]  # fmt: skip
    _run_twice(
        argv, capture, "_write_shard", monkeypatch, capsys, out,
        lambda: (out / "manifest.json").is_file() or pytest.fail("capture did not finish"),
    )  # fmt: skip


def test_two_trainings_into_one_folder(tmp_path: Path, monkeypatch, capsys) -> None:
    x, _ = planted_features(1200, d=16, n_features=16, active=2, seed=1)
    acts = write_synthetic_shards(tmp_path / "acts", x, shard_tokens=400)
    out = tmp_path / "sae"
    argv = ["train", "--activations", str(acts), "--out", str(out), "--k", "4",
            "--expansion-factor", "2", "--epochs", "1", "--device", "cpu"]  # fmt: skip
    _run_twice(
        argv, Trainer, "step", monkeypatch, capsys, out / HOOK,
        lambda: (out / HOOK / "sae.safetensors").is_file() or pytest.fail("no SAE"),
    )  # fmt: skip


def test_two_evals_into_one_folder(tmp_path: Path, colour, monkeypatch, capsys) -> None:
    cfg = tmp_path / "eval.json"
    cfg.write_text(json.dumps(ua_ira_config(tmp_path)))
    out = tmp_path / "run"
    _run_twice(
        ["eval", "-c", str(cfg)], runner, "_save_png", monkeypatch, capsys, out,
        lambda: (out / "report.json").is_file() or pytest.fail("eval did not finish"),
    )  # fmt: skip


def test_a_lock_whose_record_cannot_be_written_is_let_go(tmp_path: Path, monkeypatch) -> None:
    def full(path: object, data: object) -> None:
        raise DiskFullError(path)

    monkeypatch.setattr(locks, "atomic_write_json", full)
    with pytest.raises(DiskFullError):
        FolderLock(tmp_path / "out").acquire()
    monkeypatch.undo()
    assert not (tmp_path / "out").exists()
    with FolderLock(tmp_path / "out"):  # nothing was left held
        pass
