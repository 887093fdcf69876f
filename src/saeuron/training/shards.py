"""On-disk activation datasets: safetensors shards plus a JSON manifest.

Layout of a capture folder::

    manifest.json                 # settings + list of finished shards (derived, rewritten)
    shard_00000.safetensors       # "activations" [N, d] fp16/bf16, "step" [N] int16,
    shard_00000.json              #   "prompt" [N] int32; sidecar written after the shard:
    ...                           #   its presence marks the shard finished (resume key)

Readers go through :class:`ActivationShards`, which never loads more than one shard.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from saeuron.utils.files import CAPTURE_MANIFEST
from saeuron.utils.io import atomic_write_json

MANIFEST = CAPTURE_MANIFEST
SHARD_GLOB = "shard_*.safetensors"


def shard_name(index: int) -> str:
    return f"shard_{index:05d}"


@dataclass(frozen=True)
class ShardInfo:
    index: int
    path: Path
    n_tokens: int
    meta: dict[str, Any]


def finished_shards(folder: Path) -> list[ShardInfo]:
    """Shards whose sidecar exists (written only after the shard itself)."""
    infos = []
    for sidecar in sorted(folder.glob("shard_*.json")):
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        path = sidecar.with_suffix(".safetensors")
        if path.is_file():
            infos.append(ShardInfo(int(meta["index"]), path, int(meta["n_tokens"]), meta))
    return sorted(infos, key=lambda s: s.index)


def write_manifest(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    shards = finished_shards(folder)
    manifest = {
        **settings,
        "n_tokens": sum(s.n_tokens for s in shards),
        "shards": [s.meta for s in shards],
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


class ActivationShards:
    """Read access to a capture folder, one shard in memory at a time."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(
                f"{self.folder} has no {MANIFEST}: not a finished `saeuron cache` output"
            )
        self.manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        self.shards = [
            ShardInfo(int(m["index"]), self.folder / f"{shard_name(int(m['index']))}.safetensors",
                      int(m["n_tokens"]), m)
            for m in self.manifest["shards"]
        ]
        if not self.shards:
            raise ValueError(f"{self.folder} holds no activation shards")

    @property
    def d_in(self) -> int:
        return int(self.manifest["d_in"])

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    def load(self, shard: ShardInfo, key: str = "activations") -> Tensor:
        with safe_open(str(shard.path), framework="pt") as fh:
            return fh.get_tensor(key)

    def split(self, heldout_fraction: float) -> tuple[list[ShardInfo], list[ShardInfo]]:
        """Train and held-out shards; the held-out ones are the last, at least one if >= 2."""
        if heldout_fraction <= 0 or len(self.shards) < 2:
            return list(self.shards), []
        n_held = max(1, round(len(self.shards) * heldout_fraction))
        n_held = min(n_held, len(self.shards) - 1)
        return self.shards[:-n_held], self.shards[-n_held:]

    def iter_tokens(self, shards: list[ShardInfo] | None = None) -> Iterator[Tensor]:
        for shard in shards if shards is not None else self.shards:
            yield self.load(shard)


def tensor_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
