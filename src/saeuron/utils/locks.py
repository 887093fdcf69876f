"""One writer per output folder: a second command writing the same folder refuses at once.

Captures, trainings and eval runs resume from what an earlier run of the same settings left
in their folder, and each file is written atomically; but two commands writing one folder at
the same time would each count the other's files as their own, and one's "finished" marker
could land while the other is still writing. So each such command holds a lock on its
folder (``filelock``: an OS-level lock that the kernel releases when the process dies, so a
killed run never leaves the folder locked) and records beside it who holds it (pid, command,
host, start time), for the refusal to name.

Both files are removed when the command ends. Folders on object stores (``s3://``, ...)
have no such locks: they are not locked (see the capture docs).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from filelock import FileLock, Timeout

from saeuron.utils.errors import UserError
from saeuron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

LOCK_FILE = ".saeuron.lock"
HOLDER_FILE = ".saeuron.lock.json"
"""Who holds the lock: ``{"pid", "command", "host", "since"}``, written by the holder."""


class FolderBusyError(UserError):
    """Another process is writing the folder; the message names it."""

    def __init__(self, folder: Path, holder: dict[str, Any] | None):
        self.folder = str(folder)
        self.holder = holder or {}
        if holder:
            who = f"pid {holder.get('pid')}"
            if holder.get("host") and holder.get("host") != socket.gethostname():
                who += f" on {holder['host']}"
            who += f" ({holder.get('command') or 'unknown command'})"
            since = holder.get("since")
            if isinstance(since, (int, float)):
                who += f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
        else:
            who = "another process (it has not said which yet)"
        super().__init__(
            f"{folder} is being written by {who}; wait for it to finish, or write to "
            "another folder"
        )


def this_command() -> str:
    """The command line of this process as the user typed it (the program's name, not its
    path), for another process's refusal to name."""
    argv = sys.argv or ["python"]
    return " ".join([Path(argv[0]).name or "python", *argv[1:]])[:500]


def read_holder(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / HOLDER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class FolderLock:
    """Hold ``folder`` for this process: ``with FolderLock(out): ...``.

    Refuses at once (:class:`FolderBusyError`, naming the holder) when another process
    holds it; never waits, so a user who started the same command twice learns it at
    once rather than after the first finishes. Re-entrant within one process (a command
    that locks a folder and calls code that locks it again), so nested use is safe.
    """

    _held: dict[Path, int] = {}
    """Folders this process holds, with how many times (re-entrant use)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._lock: FileLock | None = None
        self._created = False

    def acquire(self) -> FolderLock:
        key = self.folder.resolve()
        if key in FolderLock._held:
            FolderLock._held[key] += 1
            return self
        self._created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_FILE
        for _ in range(3):
            lock = FileLock(str(path), timeout=0)
            try:
                lock.acquire()
            except Timeout:
                self._tidy()
                raise FolderBusyError(self.folder, read_holder(self.folder)) from None
            if path.exists():
                break
            # The previous holder removed the file between our open and our lock: the lock
            # we hold is on a file nobody else can find. Take it again, on a file that exists.
            lock.release()
        else:  # pragma: no cover - three removals in a row would need three racing holders
            raise FolderBusyError(self.folder, read_holder(self.folder))
        self._lock = lock
        FolderLock._held[key] = 1
        try:
            atomic_write_json(
                self.folder / HOLDER_FILE,
                {"pid": os.getpid(), "command": this_command(), "host": socket.gethostname(),
                 "since": round(time.time(), 3)},
            )  # fmt: skip
        except BaseException:
            # No record could be written (a full disk, say): let go rather than hold a lock
            # that nobody would release.
            self.release()
            raise
        return self

    def release(self) -> None:
        key = self.folder.resolve()
        count = FolderLock._held.get(key, 0)
        if count > 1:
            FolderLock._held[key] = count - 1
            return
        FolderLock._held.pop(key, None)
        if self._lock is None:
            return
        # The record first, then the lock file while still held, then the lock itself.
        (self.folder / HOLDER_FILE).unlink(missing_ok=True)
        (self.folder / LOCK_FILE).unlink(missing_ok=True)
        self._lock.release()
        self._lock = None
        self._tidy()

    def _tidy(self) -> None:
        """Remove the folder again when this lock made it and nothing was written: a
        command refused after locking leaves the disk as it found it."""
        if self._created:
            try:
                self.folder.rmdir()
            except OSError:
                pass  # something was written: keep it

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
