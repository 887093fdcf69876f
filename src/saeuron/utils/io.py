"""Atomic writes: nothing the project writes is ever seen half-written.

The writers that need no torch live in :mod:`saeuron.utils.atomic` (configs import them from
there, so that ``--help`` stays free of torch) and are re-exported here with the tensor writer.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from saeuron.utils.atomic import (
    DISK_FULL,
    DISK_FULL_TEXT,
    atomic_path,
    atomic_write,
    atomic_write_json,
    check_output_file,
    check_output_folder,
    is_disk_full,
    make_json_portable,
    read_json_or_empty,
    relative_paths,
)

__all__ = [
    "DISK_FULL",
    "DISK_FULL_TEXT",
    "atomic_path",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_safetensors",
    "check_output_file",
    "check_output_folder",
    "is_disk_full",
    "make_json_portable",
    "read_json_or_empty",
    "relative_paths",
]


def atomic_write_safetensors(
    path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None
) -> Path:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
