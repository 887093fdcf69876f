"""A safetensors file's header checked against the file itself, before any tensor is read.

A safetensors file starts with an 8-byte little-endian header length, then that many bytes
of JSON naming each tensor's dtype, shape and byte range in the data that follows. A file
from elsewhere can claim anything there: a header of exabytes, or tensors of terabytes in
a file of kilobytes. The reader would then try to allocate what the file claims. Here the
claims are compared with the file's real size first, from its first bytes only, and a file
that lies is refused with what it claims and what it holds.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from saeuron.utils.errors import FileFormatError

MAX_HEADER_BYTES = 16 * 2**20
"""16 MiB of JSON: a header lists names, shapes and offsets only; the largest real
checkpoints (thousands of tensors) need well under 1 MiB."""

DTYPE_BYTES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
    "C64": 8, "C128": 16,
}  # fmt: skip
"""Bytes per element of each safetensors dtype (sub-byte dtypes are not accepted)."""


def human_bytes(n: int) -> str:
    """``n`` bytes as people read them: ``2.0 TB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if value < 1000 or unit == "PB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def check_safetensors(path: str | Path) -> dict[str, Any]:
    """The header of the safetensors file ``path`` (tensor entries only), after checking
    every size it declares against the file's size; a one-line error naming the file
    otherwise. Reads the first ``8 + header length`` bytes and nothing more."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise FileFormatError(
                    path, f"not a safetensors file: {size} bytes, too short for a header"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > size - 8:
                raise FileFormatError(
                    path,
                    f"the header claims {human_bytes(header_len)} but the file holds "
                    f"{human_bytes(size)}: truncated or not a safetensors file; refusing it",
                )
            if header_len > MAX_HEADER_BYTES:
                raise FileFormatError(
                    path,
                    f"the header is {human_bytes(header_len)}, more than the "
                    f"{human_bytes(MAX_HEADER_BYTES)} any real checkpoint needs; refusing it",
                )
            raw = handle.read(header_len)
    except OSError as err:
        raise FileFormatError(path, f"cannot be read ({err.strerror or err})") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileFormatError(path, f"the header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise FileFormatError(path, f"the header is a JSON {type(header).__name__}, not an object")
    data_len = size - 8 - header_len
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    claimed = 0
    for name, entry in tensors.items():
        claimed += _check_entry(path, name, entry, data_len)
    if claimed > data_len:
        raise FileFormatError(
            path,
            f"the header declares {human_bytes(claimed)} of tensors but the file holds "
            f"{human_bytes(data_len)} of data; refusing it",
        )
    return tensors


def _check_entry(path: Path, name: str, entry: Any, data_len: int) -> int:
    """The bytes tensor ``name`` declares, once its dtype, shape and offsets agree with each
    other and lie within the file's ``data_len`` bytes of data."""
    if not isinstance(entry, dict):
        raise FileFormatError(path, f"tensor {name!r}: header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise FileFormatError(
            path, f"tensor {name!r}: dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}"
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise FileFormatError(path, f"tensor {name!r}: shape {shape!r} is not a list of sizes")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)
        or offsets[1] < offsets[0]
    ):
        raise FileFormatError(path, f"tensor {name!r}: data_offsets {offsets!r} are not a range")
    declared = math.prod(shape) * DTYPE_BYTES[dtype]
    begin, end = offsets
    if declared != end - begin:
        raise FileFormatError(
            path,
            f"tensor {name!r}: shape {shape} of {dtype} is {human_bytes(declared)} but its "
            f"offsets span {human_bytes(end - begin)}; refusing it",
        )
    if end > data_len:
        raise FileFormatError(
            path,
            f"tensor {name!r} claims bytes up to {human_bytes(end)} but the file holds "
            f"{human_bytes(data_len)} of data: truncated or hostile; refusing it",
        )
    return declared
