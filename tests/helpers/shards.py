"""Write activation tensors in the capture-folder format, for tests without a diffusion model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saeuron.training.shards import write_manifest, write_shard
from saeuron.utils.storage import Folder


def write_synthetic_shards(
    folder: str | Path,
    x: Tensor,
    shard_tokens: int,
    settings: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path | str:
    """Split ``x`` [N, d] into shards of ``shard_tokens`` and write a finished capture folder.

    ``settings`` go into the manifest; ``hookpoint``, ``model``, ``d_in`` and
    ``activation_site`` get test defaults when missing. Tokens are numbered as if each
    prompt gave 256 tokens per step over 4 steps, so ``step`` and ``prompt`` look plausible.
    ``folder`` may be an fsspec URL (``memory://...``); the return value is then that URL.
    """
    store = Folder(folder)
    n, d = x.shape
    settings = {
        "hookpoint": "unet.up_blocks.1.attentions.1",
        "model": "synthetic",
        "d_in": d,
        "activation_site": "output",
        **(settings or {}),
    }
    token = torch.arange(n)
    steps = (token // 256 % 4).to(torch.int16)
    prompts = (token // 1024).to(torch.int32)
    for index, start in enumerate(range(0, n, shard_tokens)):
        end = min(start + shard_tokens, n)
        first, last = int(prompts[start]), int(prompts[end - 1]) + 1
        write_shard(
            store,
            index,
            {
                "activations": x[start:end].to(dtype),
                "step": steps[start:end],
                "prompt": prompts[start:end],
            },
            {"prompts": [first, last]},
        )
    write_manifest(store, settings)
    return folder if store.remote else Path(folder)


def planted_features(
    n_tokens: int, d: int = 32, n_features: int = 128, active: int = 3, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Tokens that are sparse non-negative mixes of ``n_features`` random unit directions.

    Returns ``(x [n_tokens, d], directions [n_features, d])``; each token combines exactly
    ``active`` distinct directions with weights in [0.5, 1.5], plus a constant offset so the
    data is not centred (the decoder bias has something to learn).
    """
    gen = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_features, d, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    which = torch.rand(n_tokens, n_features, generator=gen).argsort(dim=1)[:, :active]
    weights = 0.5 + torch.rand(n_tokens, active, generator=gen)
    codes = torch.zeros(n_tokens, n_features).scatter_(1, which, weights)
    offset = 0.5 * torch.randn(d, generator=gen)
    return codes @ directions + offset, directions
