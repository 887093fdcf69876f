"""Folders on any filesystem: a local path or an fsspec URL (``s3://``, ``gs://``, ``hf://``...).

Activation captures are too big for one local disk at the paper's scale, so capture writes
them, and training reads them, through :class:`Folder`, the one place the project touches a
filesystem library. A local path keeps the plain ``os`` calls; a URL goes through fsspec,
whose backends (s3fs, gcsfs, huggingface_hub...) the user installs for the stores they use.

Guarantees, the same on every filesystem:

- **Atomic writes.** A reader never sees a half-written file. Locally: a temporary file
  renamed into place. Object stores (S3, GCS, Azure, the Hugging Face hub) publish an
  object only when its upload completes, so the file is written under its own name; on
  other filesystems a temporary name is moved into place.
- **Streamed, verified reads.** :meth:`Folder.read_verified` reads a file in chunks,
  checks its size before reading and its SHA-256 while reading, and names the file in a
  one-line :class:`~saeuron.utils.errors.FileFormatError` on a mismatch. Nothing is ever
  downloaded as a whole folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from saeuron.utils.atomic import atomic_write, check_output_folder
from saeuron.utils.errors import ConfigError, FileFormatError

CHUNK_BYTES = 64 * 2**20
"""Bytes per read: large enough that one request per chunk costs little on object stores."""

# Filesystems whose uploads appear whole or not at all (the object becomes visible when the
# upload completes): writing under the final name is atomic there, and a rename would be a
# second full copy (S3, GCS) or a second commit (the hub).
_ATOMIC_UPLOADS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "hf"})


def is_url(location: str | Path) -> bool:
    """Whether ``location`` names a filesystem by protocol (``s3://...``), not a local path."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def check_location(location: str | Path, setting: str, write: bool = False) -> None:
    """Refuse, before any work, a location that cannot be used.

    A URL must name a protocol fsspec knows, with its backend installed (``s3fs`` for
    ``s3://``...); a local folder to write must be a creatable, writable folder.
    """
    text = str(location)
    if is_url(text):
        _filesystem(text, setting)
    elif write:
        check_output_folder(text.removeprefix("file://"), setting)


def _filesystem(url: str, setting: str) -> tuple[Any, str]:
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise ConfigError(setting, f"{url}: {err} (pip install it)") from None
    except ValueError as err:
        raise ConfigError(
            setting, f"{url}: {err}; expected a local folder or an fsspec URL such as s3://..."
        ) from None
    return fs, root.rstrip("/")


def _protocols(fs: Any) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


class Folder:
    """One folder, local or remote: names inside it are plain file names."""

    def __init__(self, location: str | Path, setting: str = "out"):
        self.location = str(location)
        self.setting = setting
        self.remote = is_url(self.location)
        if self.remote:
            self.fs, self.root = _filesystem(self.location, setting)
            self._atomic_uploads = bool(_protocols(self.fs) & _ATOMIC_UPLOADS)
            self._made = False
        else:
            self.local_root = Path(self.location.removeprefix("file://"))

    def __repr__(self) -> str:
        return f"Folder({self.location!r})"

    def __str__(self) -> str:
        return self.location

    def path(self, name: str) -> str:
        """How a file in this folder is named to the user (a path or a URL)."""
        if self.remote:
            return f"{self.location.rstrip('/')}/{name}"
        return str(self.local_root / name)

    def _remote(self, name: str) -> str:
        return f"{self.root}/{name}"

    # -- listing ----------------------------------------------------------------------------

    def exists(self) -> bool:
        if self.remote:
            return bool(self.fs.isdir(self.root))
        return self.local_root.is_dir()

    def is_file(self, name: str) -> bool:
        if self.remote:
            return bool(self.fs.isfile(self._remote(name)))
        return (self.local_root / name).is_file()

    def sizes(self) -> dict[str, int]:
        """Every file directly in the folder with its size in bytes: one listing."""
        if self.remote:
            try:
                entries = self.fs.ls(self.root, detail=True)
            except FileNotFoundError:
                return {}
            return {
                str(e["name"]).rstrip("/").rsplit("/", 1)[-1]: int(e["size"])
                for e in entries
                if e.get("type") == "file"
            }
        if not self.local_root.is_dir():
            return {}
        with os.scandir(self.local_root) as entries:
            return {e.name: e.stat().st_size for e in entries if e.is_file()}

    def size(self, name: str) -> int:
        if self.remote:
            return int(self.fs.size(self._remote(name)))
        return (self.local_root / name).stat().st_size

    # -- reading ----------------------------------------------------------------------------

    def read_bytes(self, name: str) -> bytes:
        """A small file's bytes (manifests, sidecars); FileNotFoundError when absent."""
        if self.remote:
            return bytes(self.fs.cat_file(self._remote(name)))
        return (self.local_root / name).read_bytes()

    def read_json(self, name: str) -> Any:
        return _parse_json(self.read_bytes(name), self.path(name))

    def read_json_many(self, names: list[str]) -> list[Any]:
        """Several small JSON files; remote filesystems fetch them concurrently."""
        if not self.remote or not names:
            return [self.read_json(name) for name in names]
        paths = [self._remote(name) for name in names]
        found = self.fs.cat(paths, on_error="raise")
        by_path = {self.fs._strip_protocol(p): data for p, data in found.items()}
        return [
            _parse_json(by_path[self.fs._strip_protocol(p)], self.path(n))
            for p, n in zip(paths, names)
        ]

    def read_range(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of a file, without reading the rest."""
        if self.remote:
            return bytes(self.fs.cat_file(self._remote(name), start=start, end=end))
        with open(self.local_root / name, "rb") as fh:
            fh.seek(start)
            return fh.read(end - start)

    def _chunks(self, name: str, size: int) -> Iterator[bytes]:
        if self.remote:
            # Ranged reads: stateless, one request per chunk, the same on every backend.
            for start in range(0, size, CHUNK_BYTES):
                yield self.read_range(name, start, min(size, start + CHUNK_BYTES))
            return
        with open(self.local_root / name, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                yield chunk

    def read_verified(
        self, name: str, size: int | None = None, sha256: str | None = None
    ) -> bytearray:
        """The whole file, streamed in chunks; its size and SHA-256 checked when given.

        A mismatch is a :class:`FileFormatError` naming the file and both values; the size is
        checked before anything is read.
        """
        actual = self.size(name)
        if size is not None and actual != size:
            raise FileFormatError(
                self.path(name), f"{actual} bytes, expected {size}: the file is truncated or "
                "was replaced"
            )
        buf = bytearray(actual)
        view = memoryview(buf)
        digest = hashlib.sha256() if sha256 is not None else None
        offset = 0
        for chunk in self._chunks(name, actual):
            if offset + len(chunk) > actual:
                raise FileFormatError(self.path(name), "grew while being read")
            view[offset : offset + len(chunk)] = chunk
            if digest is not None:
                digest.update(chunk)
            offset += len(chunk)
        if offset != actual:
            raise FileFormatError(self.path(name), f"read {offset} of {actual} bytes")
        if digest is not None and digest.hexdigest() != sha256:
            raise FileFormatError(
                self.path(name), f"SHA-256 {digest.hexdigest()[:16]}... does not match the "
                f"recorded {str(sha256)[:16]}...: the file is corrupt"
            )
        return buf

    def sha256(self, name: str) -> tuple[int, str]:
        """(size, SHA-256 hex digest) of a file, streamed without keeping it in memory."""
        size = self.size(name)
        digest = hashlib.sha256()
        for chunk in self._chunks(name, size):
            digest.update(chunk)
        return size, digest.hexdigest()

    # -- writing ----------------------------------------------------------------------------

    def write_bytes(self, name: str, data: bytes | bytearray | memoryview) -> str:
        """Write ``data`` atomically under ``name``; returns its user-facing path."""
        if not self.remote:
            path = self.local_root / name
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
            return str(path)
        if not self._made:
            # Object stores have no folders; elsewhere the folder must exist.
            self.fs.makedirs(self.root, exist_ok=True)
            self._made = True
        target = self._remote(name)
        if self._atomic_uploads:
            self.fs.pipe_file(target, bytes(data))
        else:
            tmp = self._remote(f".{name}.{uuid.uuid4().hex}.tmp")
            try:
                self.fs.pipe_file(tmp, bytes(data))
                self.fs.mv(tmp, target)
            except BaseException:
                if self.fs.exists(tmp):
                    self.fs.rm_file(tmp)
                raise
        return self.path(name)

    def write_json(self, name: str, data: Any) -> str:
        text = json.dumps(data, indent=2, sort_keys=False) + "\n"
        return self.write_bytes(name, text.encode("utf-8"))

    def remove(self, name: str) -> None:
        """Delete a file; a missing one is fine."""
        if self.remote:
            path = self._remote(name)
            if self.fs.exists(path):
                self.fs.rm_file(path)
            return
        (self.local_root / name).unlink(missing_ok=True)


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(where, f"not a JSON file ({err})") from None
