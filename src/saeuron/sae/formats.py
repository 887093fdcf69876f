"""Checkpoint layouts other than the EleutherAI sae/sparsify one read by :mod:`.model`.

Each layout registers a detector and a reader in :data:`saeuron.sae.model.SAE_FORMATS`;
:meth:`Sae.load_from_disk` tries them in registration order. Third-party files are read with
``torch.load(weights_only=True)``, whose restricted unpickler refuses anything but tensors
and plain containers, or from safetensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from saeuron.sae.config import SaeConfig
from saeuron.sae.model import SAE_FORMATS, Sae, SaeFormat, read_safetensors
from saeuron.utils.errors import ConfigError, FileFormatError

SDXL_UNBOX_FILES = ("state_dict.pth", "state_dict.safetensors")


def _is_sdxl_unbox(folder: Path) -> bool:
    return any((folder / f).is_file() for f in SDXL_UNBOX_FILES)


def read_sdxl_unbox(folder: Path, k: int | None = None) -> Sae:
    """sdxl-unbox: ``pre_bias``, ``latent_bias``, ``encoder.weight``, ``decoder.weight`` (d x n).

    ``k`` comes from the argument, a ``config.json`` beside the weights, or the ``_k<N>`` in
    the folder's path, in that order.
    """
    if (folder / "state_dict.safetensors").is_file():
        state = read_safetensors(folder / "state_dict.safetensors")
    else:
        state = torch.load(folder / "state_dict.pth", map_location="cpu", weights_only=True)
    if k is None and (folder / "config.json").is_file():
        k = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("k")
    if k is None:
        match = re.search(r"_k(\d+)", str(folder.resolve()))
        k = int(match.group(1)) if match else None
    if k is None:
        raise ConfigError("k", f"cannot tell k for sdxl-unbox checkpoint {folder}; pass k=...")
    missing = {"encoder.weight", "decoder.weight", "pre_bias", "latent_bias"} - set(state)
    if missing:
        raise FileFormatError(folder, f"sdxl-unbox weights lack {', '.join(sorted(missing))}")
    n, d = state["encoder.weight"].shape
    cfg = SaeConfig(d_in=d, num_latents=n, expansion_factor=max(n // d, 1), k=int(k))
    sae = Sae(cfg, dtype=state["encoder.weight"].dtype)
    sae.load_state_dict(
        {
            "encoder.weight": state["encoder.weight"],
            "encoder.bias": state["latent_bias"],
            "W_dec": state["decoder.weight"].T.contiguous(),
            "b_dec": state["pre_bias"],
        }
    )
    # sdxl-unbox trains on the block's update (output minus input).
    sae.meta["activation_site"] = "update"
    return sae


SAE_FORMATS.register("sdxl-unbox")(
    SaeFormat(
        detect=_is_sdxl_unbox,
        read=read_sdxl_unbox,
        describe="state_dict.pth or state_dict.safetensors (sdxl-unbox)",
    )
)
