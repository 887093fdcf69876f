"""Atomic writes: nothing the project writes is ever seen half-written.

Everything but tensors, without torch: configs check their output paths with it, and
``--help`` reads the configs. :mod:`saeuron.utils.io` adds safetensors and re-exports this.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from saeuron.utils.errors import ConfigError, DiskFullError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""A full disk, or a full quota: the same to the user, who must free space."""


DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "database or disk is full")
"""How libraries that wrap the OS error in their own say it (safetensors' SafetensorError;
SQLite, under a tuning study, through SQLAlchemy)."""


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err``, or an error it was raised from or while handling, is a full disk: a
    library may meet one inside and fail with its own error (Optuna does, in its storage)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in DISK_FULL:
            return True
        if any(text in str(current) for text in DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def disk_full_names(path: object) -> Iterator[None]:
    """A full disk met inside (whatever library raised it: SQLite, the hub client) becomes
    one :class:`~saeuron.utils.errors.DiskFullError` naming ``path``, what the user must make
    room for; anything else passes through unchanged."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:  # noqa: BLE001 - only a full disk is translated
        if is_disk_full(err):
            raise DiskFullError(path) from err
        raise


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    A full disk, wherever it strikes (the folder, the temporary file, the writing), is one
    :class:`~saeuron.utils.errors.DiskFullError` naming ``path``: the temporary file is
    removed and the previous ``path``, never touched before the rename, is intact."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if is_disk_full(err):
            raise DiskFullError(path) from err
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path) from err
        raise


def atomic_write(path: str | Path, writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def read_json_or_empty(path: str | Path) -> dict[str, Any]:
    """The JSON object stored at ``path``, or ``{}`` where no file exists yet."""
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def atomic_write_json(path: str | Path, data: Any) -> Path:
    def write(tmp: Path) -> None:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    return atomic_write(path, write)


def check_output_file(path: str | Path, setting: str = "out") -> Path:
    """Refuse, before any work, an output file that is a folder or cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(setting, f"{path} is a folder; expected a file name")
    _check_writable_folder(path.parent if str(path.parent) else Path("."), setting)
    return path


def check_output_folder(path: str | Path, setting: str = "out") -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(setting, f"{path} exists and is not a folder")
    _check_writable_folder(path, setting)
    return path


def _check_writable_folder(folder: Path, setting: str) -> None:
    # The nearest existing ancestor decides: a folder we would create must be creatable.
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(setting, f"{probe} is a file, so {folder} cannot be created")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(setting, f"{probe} is not writable")


def relative_paths(data: Any, roots: dict[str, Path]) -> Any:
    """``data`` (JSON-like) with every absolute path under one of ``roots`` renamed
    ``NAME/rest`` (``rest`` alone for the name ``""``): records that ship to other machines
    name what they came from without the build machine's folders."""
    if isinstance(data, dict):
        return {k: relative_paths(v, roots) for k, v in data.items()}
    if isinstance(data, list):
        return [relative_paths(v, roots) for v in data]
    if not isinstance(data, str) or not Path(data).is_absolute():
        return data
    path = Path(data).resolve()
    for name, root in roots.items():
        try:
            rest = path.relative_to(root.resolve())
        except ValueError:
            continue
        return (Path(name) / rest).as_posix() if name else rest.as_posix()
    return data


def make_json_portable(folder: Path, roots: dict[str, Path]) -> int:
    """Rewrite the JSON files under ``folder`` with :func:`relative_paths`; returns how many
    changed (each rewritten atomically)."""
    changed = 0
    for path in sorted(folder.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        portable = relative_paths(data, roots)
        if portable != data:
            atomic_write_json(path, portable)
            changed += 1
    return changed
