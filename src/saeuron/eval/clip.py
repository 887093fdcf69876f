"""CLIP for the metrics that need it (clip_score, ua_ira, preservation): load once, embed.

Any transformers CLIP checkpoint works: a hub id (users with a network) or a local folder
in ``save_pretrained`` layout (tests use a tiny one built from config).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import CLIPModel, CLIPProcessor

from saeuron.eval.requirement import MetricError, Requirement, hub_cached
from saeuron.utils.devices import resolve_device

logger = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


def available_offline(model: str) -> bool:
    """Whether ``model`` loads without a network: a local folder or a hub id in the cache."""
    if Path(model).is_dir():
        return (Path(model) / "config.json").is_file()
    return hub_cached(model, "config.json") is not None


def clip_requirement(model: str) -> Requirement:
    ok = available_offline(model)
    return Requirement(
        f"CLIP model {model}", ok, "" if ok else "not on this machine: downloaded from the hub",
        kind="download",
    )


class Clip:
    def __init__(self, model: str, device: str | None = None):
        self.device = resolve_device(device)
        try:
            self.model = CLIPModel.from_pretrained(model).to(self.device).eval()
            self.processor = CLIPProcessor.from_pretrained(model)
        except OSError as err:
            raise MetricError(f"cannot load the CLIP model {model!r}: {err}") from err

    @torch.no_grad()
    def embed_images(self, images: Sequence[Any], batch_size: int = 32) -> Tensor:
        out = []
        for start in range(0, len(images), batch_size):
            batch = [im.convert("RGB") for im in images[start : start + batch_size]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = self.model.get_image_features(pixel_values=pixels.to(self.device))
            out.append(_unit(_tensor(feats)).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.processor(
                text=list(texts[start : start + batch_size]),
                return_tensors="pt",
                padding=True,
                truncation=True,
            )
            feats = self.model.get_text_features(
                input_ids=tokens["input_ids"].to(self.device),
                attention_mask=tokens["attention_mask"].to(self.device),
            )
            out.append(_unit(_tensor(feats)).float().cpu())
        return torch.cat(out)


def _tensor(output: Any) -> Tensor:
    # Newer transformers may return a model output instead of the bare projection.
    if torch.is_tensor(output):
        return output
    for name in ("pooler_output", "image_embeds", "text_embeds"):
        value = getattr(output, name, None)
        if torch.is_tensor(value):
            return value
    raise MetricError(f"unexpected CLIP output {type(output).__name__}")


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@lru_cache(maxsize=2)
def load_clip(model: str, device: str | None = None) -> Clip:
    """One CLIP per (model, device) for the whole run: several metrics share it."""
    logger.info("loading CLIP %s", model)
    return Clip(model, device)


class ClipMetric:
    """For metrics whose config names ``clip_model`` and ``device``: what they need, and
    loading it before any image is sampled."""

    config: Any

    def requirements(self) -> list[Requirement]:
        return [clip_requirement(self.config.clip_model)]

    def prepare(self) -> None:
        load_clip(self.config.clip_model, self.config.device)
