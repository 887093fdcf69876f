"""Activation datasets: safetensors shards plus a JSON manifest, on any filesystem.

Layout of a capture folder (a local path or an fsspec URL; see :mod:`saeuron.utils.storage`)::

    plan.json                     # how prompts are cut into shards (written once)
    manifest.json                 # settings + every finished shard's sidecar (derived)
    shard_00000.safetensors       # "activations" [N, d] fp16/bf16/fp32, "step" [N] int16,
    shard_00000.json              #   "prompt" [N] int32; the sidecar is written after the
    ...                           #   shard, and its presence marks the shard finished

A sidecar records the shard's ``index``, ``n_tokens``, prompt range, size in ``bytes`` and
``sha256``. The capture checks finished shards against their sidecars before it counts them
done (a bad one is captured again), and :class:`ActivationShards` checks every shard's size
when it opens a capture and its SHA-256 the first time it reads it, naming a bad shard in a
one-line error. Readers never hold more than the shards they ask for: a capture is streamed,
never downloaded whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import save as encode_safetensors
from torch import Tensor

from saeuron.models.sites import renamed_settings
from saeuron.utils.errors import FileFormatError
from saeuron.utils.files import CAPTURE_MANIFEST, JSON_SUFFIX, SHARD_PREFIX, TENSORS_SUFFIX
from saeuron.utils.storage import Folder

log = logging.getLogger(__name__)

MANIFEST = CAPTURE_MANIFEST
SHARD_GLOB = f"{SHARD_PREFIX}*{TENSORS_SUFFIX}"
RECAPTURE = "rerun `saeuron cache` with the same settings to capture it again"

# safetensors' dtype names -> torch dtypes (the ones a capture or its index can hold).
_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_HEADER_LIMIT = 100 * 2**20  # safetensors' own bound on a header's size


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{index:05d}"


def shard_file(index: int) -> str:
    return shard_name(index) + TENSORS_SUFFIX


def sidecar_file(index: int) -> str:
    return shard_name(index) + JSON_SUFFIX


@dataclass(frozen=True)
class ShardInfo:
    index: int
    path: str
    """Where the shard is, as the user names it (a local path or a URL)."""
    n_tokens: int
    meta: dict[str, Any]

    @property
    def file(self) -> str:
        return shard_file(self.index)

    @property
    def sha256(self) -> str | None:
        return self.meta.get("sha256")

    @property
    def nbytes(self) -> int | None:
        value = self.meta.get("bytes")
        return None if value is None else int(value)


# -- writing -----------------------------------------------------------------------------------


def write_shard(
    folder: Folder, index: int, tensors: dict[str, Tensor], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write one shard and then its sidecar (size and SHA-256 included); returns the sidecar.

    The shard is encoded in memory so its checksum costs no second read, and each file is
    written atomically: a kill leaves either no sidecar (the shard is not done) or both.
    """
    data = encode_safetensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
    meta = {
        "index": index,
        "n_tokens": int(tensors["activations"].shape[0]),
        **(extra or {}),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    folder.write_bytes(shard_file(index), data)
    del data
    folder.write_json(sidecar_file(index), meta)
    return meta


def _shard_index(name: str) -> int | None:
    stem = name.removeprefix(SHARD_PREFIX).removesuffix(JSON_SUFFIX)
    if not name.startswith(SHARD_PREFIX) or not name.endswith(JSON_SUFFIX) or not stem.isdigit():
        return None
    return int(stem)


def finished_shards(folder: Folder, only: Iterable[int] | None = None) -> list[ShardInfo]:
    """Shards with a sidecar and a shard file, by index (one listing, sidecars read at once).

    ``only`` limits the answer (and the sidecars read) to those indices. Only presence is
    checked here; :func:`check_shard` compares a shard with its sidecar.
    """
    sizes = folder.sizes()
    wanted = None if only is None else set(only)
    indices = sorted(i for name in sizes if (i := _shard_index(name)) is not None)
    indices = [
        i for i in indices if shard_file(i) in sizes and (wanted is None or i in wanted)
    ]
    metas = folder.read_json_many([sidecar_file(i) for i in indices])
    return [
        ShardInfo(i, folder.path(shard_file(i)), int(meta["n_tokens"]), meta)
        for i, meta in zip(indices, metas)
    ]


def check_shard(folder: Folder, shard: ShardInfo, size: int | None = None) -> str | None:
    """Why ``shard`` does not match its sidecar (size, then SHA-256), or None when it does.

    ``size`` is the file's size from a listing, when the caller has one. A sidecar without a
    checksum (written before checksums existed) has nothing to check against: None.
    """
    if shard.sha256 is None:
        return None
    actual = folder.size(shard.file) if size is None else size
    if shard.nbytes is not None and actual != shard.nbytes:
        return f"{actual} bytes, its sidecar records {shard.nbytes}"
    _, digest = folder.sha256(shard.file)
    if digest != shard.sha256:
        return f"SHA-256 {digest[:16]}..., its sidecar records {shard.sha256[:16]}..."
    return None


def add_checksum(folder: Folder, shard: ShardInfo) -> ShardInfo:
    """Record the size and SHA-256 of a shard whose sidecar predates checksums."""
    size, digest = folder.sha256(shard.file)
    meta = {**shard.meta, "bytes": size, "sha256": digest}
    folder.write_json(sidecar_file(shard.index), meta)
    return ShardInfo(shard.index, shard.path, shard.n_tokens, meta)


def write_manifest(folder: Folder | str, settings: dict[str, Any]) -> dict[str, Any]:
    """``manifest.json``: the settings plus every finished shard's sidecar, checksums included."""
    folder = folder if isinstance(folder, Folder) else Folder(folder)
    shards = finished_shards(folder)
    manifest = {
        **settings,
        "n_tokens": sum(s.n_tokens for s in shards),
        "shards": [s.meta for s in shards],
    }
    folder.write_json(MANIFEST, manifest)
    return manifest


# -- reading -----------------------------------------------------------------------------------


def _header(data: bytes | bytearray | memoryview, total: int, where: str) -> tuple[int, dict]:
    """(start of the data section, header) of a safetensors file of ``total`` bytes."""
    if len(data) < 8:
        raise FileFormatError(where, "too short for a safetensors file")
    (length,) = struct.unpack("<Q", bytes(data[:8]))
    if length > _HEADER_LIMIT or 8 + length > total:
        raise FileFormatError(where, "not a safetensors file (bad header length)")
    if len(data) < 8 + length:
        raise ValueError("header not fully read")  # callers read enough; a bug if not
    try:
        header = json.loads(bytes(data[8 : 8 + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FileFormatError(where, "not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise FileFormatError(where, "not a safetensors file (header is not an object)")
    return 8 + length, header


def _entry(header: dict, key: str, where: str) -> tuple[torch.dtype, list[int], int, int]:
    entry = header.get(key)
    if not isinstance(entry, dict):
        raise FileFormatError(where, f"holds no tensor {key!r}")
    try:
        dtype = _DTYPES[entry["dtype"]]
        shape = [int(n) for n in entry["shape"]]
        start, end = (int(n) for n in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise FileFormatError(where, f"tensor {key!r} has a malformed header entry") from None
    return dtype, shape, start, end


def decode(buf: bytearray, keys: tuple[str, ...], where: str) -> dict[str, Tensor]:
    """Tensors ``keys`` of a safetensors file held in ``buf``, as views into it (no copy)."""
    base, header = _header(buf, len(buf), where)
    tensors = {}
    for key in keys:
        dtype, shape, start, end = _entry(header, key, where)
        itemsize = torch.empty((), dtype=dtype).element_size()
        count = math.prod(shape)
        if start < 0 or end != start + count * itemsize or base + end > len(buf):
            raise FileFormatError(where, f"tensor {key!r} lies outside the file")
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        else:
            flat = torch.frombuffer(buf, dtype=dtype, count=count, offset=base + start)
            tensors[key] = flat.view(shape)
    return tensors


class ActivationShards:
    """Read access to a capture folder (local or a URL), one shard in memory at a time.

    Opening a capture lists its folder once and refuses a missing or wrongly sized shard;
    each shard's SHA-256 is checked the first time this object reads it (hashing costs
    about as much as reading, so later epochs skip it). A mismatch is a one-line
    :class:`FileFormatError` naming the shard.
    """

    def __init__(self, location: str | Any):
        self.folder = Folder(location, "activations")
        try:
            self.manifest: dict[str, Any] = renamed_settings(self.folder.read_json(MANIFEST))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.folder} has no {MANIFEST}: not a finished `saeuron cache` output"
            ) from None
        entries = self.manifest.get("shards")
        if not isinstance(entries, list):
            raise FileFormatError(self.folder.path(MANIFEST), "has no list of shards")
        self.shards = [
            ShardInfo(int(m["index"]), self.folder.path(shard_file(int(m["index"]))),
                      int(m["n_tokens"]), m)
            for m in entries
        ]  # fmt: skip
        if not self.shards:
            raise ValueError(f"{self.folder} holds no activation shards")
        self._verified: set[int] = set()
        self._check_files()

    def _check_files(self) -> None:
        sizes = self.folder.sizes()
        for shard in self.shards:
            size = sizes.get(shard.file)
            if size is None:
                raise FileFormatError(shard.path, f"is missing; {RECAPTURE}")
            if shard.nbytes is not None and size != shard.nbytes:
                raise FileFormatError(
                    shard.path, f"{size} bytes, {MANIFEST} records {shard.nbytes}: truncated or "
                    f"replaced; {RECAPTURE}"
                )
        unchecked = sum(s.sha256 is None for s in self.shards)
        if unchecked:
            log.warning(
                "%s: %d shards have no checksum (captured by an older saeuron) and are not "
                "verified; rerun `saeuron cache` with the same settings to record them",
                self.folder, unchecked,
            )

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def dtype(self) -> torch.dtype:
        """The stored activations' dtype, from the first shard's header (a small read)."""
        shard = self.shards[0]
        total = self.folder.size(shard.file)
        head = self.folder.read_range(shard.file, 0, min(total, 8))
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        data = self.folder.read_range(shard.file, 0, min(total, 8 + length))
        _, header = _header(data, total, shard.path)
        return _entry(header, "activations", shard.path)[0]

    def read(
        self, shard: ShardInfo, keys: tuple[str, ...] = ("activations", "step", "prompt")
    ) -> dict[str, Tensor]:
        """Tensors of one shard, streamed from the folder and checked against the manifest."""
        verify = shard.sha256 is not None and shard.index not in self._verified
        try:
            buf = self.folder.read_verified(
                shard.file, size=shard.nbytes, sha256=shard.sha256 if verify else None
            )
        except FileFormatError as err:
            raise FileFormatError(shard.path, f"{_reason(err)}; {RECAPTURE}") from None
        except FileNotFoundError:
            raise FileFormatError(shard.path, f"is missing; {RECAPTURE}") from None
        if verify:
            self._verified.add(shard.index)
        tensors = decode(buf, keys, shard.path)
        n = tensors[keys[0]].shape[0] if keys else shard.n_tokens
        if n != shard.n_tokens:
            raise FileFormatError(shard.path, f"holds {n} tokens, {MANIFEST} records "
                                  f"{shard.n_tokens}; {RECAPTURE}")
        return tensors

    def load(self, shard: ShardInfo, key: str = "activations") -> Tensor:
        return self.read(shard, (key,))[key]

    def split(self, heldout_fraction: float) -> tuple[list[ShardInfo], list[ShardInfo]]:
        """Train and held-out shards; the held-out ones are the last, at least one if >= 2."""
        if heldout_fraction <= 0 or len(self.shards) < 2:
            return list(self.shards), []
        n_held = max(1, round(len(self.shards) * heldout_fraction))
        n_held = min(n_held, len(self.shards) - 1)
        return self.shards[:-n_held], self.shards[-n_held:]


def _reason(err: FileFormatError) -> str:
    return str(err).removeprefix(f"{err.path}: ")


def tensor_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
