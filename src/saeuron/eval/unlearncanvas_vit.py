"""UnlearnCanvas's judges: the ViT-L/16 style and object classifiers it publishes.

``style50.pth`` (51 styles, ``Seed_Images`` included) and ``style50_cls.pth`` (20 objects) are
dicts whose ``"model_state_dict"`` is timm's ``vit_large_patch16_224.augreg_in21k`` with its
head replaced by ``Linear(1024, classes)``. The evaluation scripts of UnlearnCanvas, SAeUron and
SAEmnesia classify each saved ``.jpg`` after ``Resize((224, 224))`` (PIL bilinear),
``ToTensor()`` and ``Normalize([0.5], [0.5])``, and take the argmax.

The network is defined here with timm's parameter names (timm needs torchvision, which we do
not depend on), so the published state dicts load unchanged. Files are read with
``torch.load(weights_only=True)``; a file holding other objects is refused unless the user
vouches for it (``trust_pickle``).
"""

from __future__ import annotations

import io
import logging
import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from saeuron.utils.config import ConfigError

logger = logging.getLogger(__name__)

STYLES: tuple[str, ...] = (
    "Abstractionism", "Artist_Sketch", "Blossom_Season", "Bricks", "Byzantine", "Cartoon",
    "Cold_Warm", "Color_Fantasy", "Comic_Etch", "Crayon", "Cubism", "Dadaism", "Dapple",
    "Defoliation", "Early_Autumn", "Expressionism", "Fauvism", "French", "Glowing_Sunset",
    "Gorgeous_Love", "Greenfield", "Impressionism", "Ink_Art", "Joy", "Liquid_Dreams",
    "Magic_Cube", "Meta_Physics", "Meteor_Shower", "Monet", "Mosaic", "Neon_Lines", "On_Fire",
    "Pastel", "Pencil_Drawing", "Picasso", "Pop_Art", "Red_Blue_Ink", "Rust", "Seed_Images",
    "Sketch", "Sponge_Dabbed", "Structuralism", "Superstring", "Surrealism", "Ukiyoe",
    "Van_Gogh", "Vibrant_Flow", "Warm_Love", "Warm_Smear", "Watercolor", "Winter",
)  # fmt: skip
"""The style head's classes, in its output order (UnlearnCanvas's 50-style ``theme_available``)."""
OBJECTS: tuple[str, ...] = (
    "Architectures", "Bears", "Birds", "Butterfly", "Cats", "Dogs", "Fishes", "Flame",
    "Flowers", "Frogs", "Horses", "Human", "Jellyfish", "Rabbits", "Sandwiches", "Sea",
    "Statues", "Towers", "Trees", "Waterfalls",
)  # fmt: skip
"""The object head's classes, in its output order (``class_available``)."""
UNSTYLED = "Seed_Images"
"""The photographs the styles were applied to: a class of the style head, never prompted."""
PUBLISHED_SEEDS: tuple[int, ...] = (188, 288, 588, 688, 888)
IMAGE_SIZE = 224
HEAD_WIDTH = 64
"""Channels per attention head in every timm ViT of this family (ViT-L/16: 1024 = 16 x 64)."""
LAYER_NORM_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """Pre-norm ViT with a class token and learned positions, classifying from the class
    token after the final norm; parameters named as timm names them."""

    def __init__(
        self,
        num_classes: int,
        embed_dim: int = 1024,
        depth: int = 24,
        mlp_hidden: int = 4096,
        patch: int = 16,
        image_size: int = IMAGE_SIZE,
    ):
        super().__init__()
        if embed_dim % HEAD_WIDTH:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of {HEAD_WIDTH}")
        grid = image_size // patch
        # Registration order is timm's, so state_dict() lists keys as the published files do.
        self.patch_embed = PatchEmbed(patch, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.blocks = nn.Sequential(
            *(Block(embed_dim, embed_dim // HEAD_WIDTH, mlp_hidden) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(embed_dim, num_classes)
        self.image_size = image_size

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def forward(self, images: Tensor) -> Tensor:
        """``images``: ``[N, 3, 224, 224]`` normalised to [-1, 1]; returns logits."""
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])

    @torch.no_grad()
    def predict(
        self, images: Sequence[Any], batch_size: int = 32, jpeg_quality: int | None = None
    ) -> np.ndarray:
        """Argmax class of each PIL image, preprocessed as the published scripts do."""
        device = next(self.parameters()).device
        out = []
        for start in range(0, len(images), batch_size):
            batch = preprocess(images[start : start + batch_size], jpeg_quality, self.image_size)
            out.append(self(batch.to(device)).argmax(dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


def preprocess(
    images: Sequence[Any], jpeg_quality: int | None = None, size: int = IMAGE_SIZE
) -> Tensor:
    """``Resize((224, 224))`` (PIL bilinear), ``ToTensor()``, ``Normalize([0.5], [0.5])``.

    ``jpeg_quality``: first save each image as a JPEG of that quality and read it back, as
    the published pipelines do (they write ``.jpg`` files, PIL's default quality 75, and
    classify those).
    """
    batch = []
    for image in images:
        image = image.convert("RGB")
        if jpeg_quality is not None:
            image = jpeg_round_trip(image, jpeg_quality)
        array = np.asarray(image.resize((size, size), Image.BILINEAR), dtype=np.float32)
        batch.append(torch.from_numpy(array / 255.0).permute(2, 0, 1))
    return (torch.stack(batch) - 0.5) / 0.5


def jpeg_round_trip(image: Any, quality: int) -> Any:
    """``image`` as it reads back from a JPEG file of that quality."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _read(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise ValueError(
                f"{path}: not a readable torch checkpoint ({_first_line(err)})"
            ) from None
        if not trust_pickle:
            raise ConfigError(
                "trust_pickle",
                f"{path} holds objects other than tensors and plain containers; loading it "
                "runs code from the file. Set trust_pickle=true only if you trust its source",
            ) from None
    except Exception as err:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{path}: not a readable torch checkpoint ({_first_line(err)})") from None
    logger.warning("unpickling %s because trust_pickle was given", path)
    return torch.load(path, map_location="cpu", weights_only=False)


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _architecture(path: Path, state: Mapping[str, Tensor]) -> dict[str, int]:
    try:
        embed_dim = int(state["cls_token"].shape[-1])
        patch = int(state["patch_embed.proj.weight"].shape[-1])
        grid = math.isqrt(int(state["pos_embed"].shape[1]) - 1)
        depth = sum(
            1 for key in state if key.startswith("blocks.") and key.endswith(".norm1.weight")
        )
        return {
            "num_classes": int(state["head.weight"].shape[0]),
            "embed_dim": embed_dim,
            "depth": depth,
            "mlp_hidden": int(state["blocks.0.mlp.fc1.weight"].shape[0]),
            "patch": patch,
            "image_size": grid * patch,
        }
    except (KeyError, AttributeError, IndexError, TypeError) as err:
        raise ValueError(
            f"{path}: model_state_dict is not a timm ViT (missing or malformed {err})"
        ) from None


def load_classifier(
    path: str | Path, trust_pickle: bool = False, num_classes: int | None = None
) -> VisionTransformer:
    """A published UnlearnCanvas classifier (``style50.pth`` or ``style50_cls.pth``), on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("classifier", f"file {str(path)!r} does not exist")
    raw = _read(path, trust_pickle)
    if not isinstance(raw, Mapping) or "model_state_dict" not in raw:
        keys = sorted(map(str, raw)) if isinstance(raw, Mapping) else type(raw).__name__
        raise ValueError(f"{path}: expected a dict with 'model_state_dict', got {keys}")
    state = raw["model_state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path}: model_state_dict is not a dict of tensors")
    arch = _architecture(path, state)
    if num_classes is not None and arch["num_classes"] != num_classes:
        raise ValueError(
            f"{path}: its head has {arch['num_classes']} classes, expected {num_classes} "
            "(style50.pth judges 51 styles, style50_cls.pth 20 objects)"
        )
    model = VisionTransformer(**arch)
    want, have = set(model.state_dict()), set(state)
    if want != have:
        raise ValueError(
            f"{path}: model_state_dict differs from a timm ViT: missing {sorted(want - have)[:5]}, "
            f"unexpected {sorted(have - want)[:5]}"
        )
    try:
        model.load_state_dict(dict(state))
    except RuntimeError as err:
        raise ValueError(f"{path}: {_first_line(err)}") from None
    return model.eval()
