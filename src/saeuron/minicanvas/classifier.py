"""The MiniCanvas judge: a small CNN with an object head, a style head and a scene head.

It plays the role of UnlearnCanvas' ViT classifiers. The object and style heads pick one
class each; the scene head says, for every object, whether it is in the picture (several
can be: a scene holds two). Trained on procedural images only; stored as
``classifier.safetensors`` + ``classifier.json``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from saeuron.minicanvas.world import OBJECTS, STYLES, sample_images, sample_scenes
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)

WEIGHTS = "classifier.safetensors"
CONFIG = "classifier.json"
# A scene-head probability above this counts the object as present.
PRESENT = 0.5


class MiniCanvasClassifier(nn.Module):
    def __init__(
        self,
        width: int = 32,
        n_objects: int = len(OBJECTS),
        n_styles: int = len(STYLES),
        scene_head: bool = True,
    ):
        super().__init__()
        self.width = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, width),
            nn.MaxPool2d(2),
            block(width, width * 2),
            nn.MaxPool2d(2),
            block(width * 2, width * 4),
        )
        self.object_head = nn.Linear(width * 4, n_objects)
        self.style_head = nn.Linear(width * 4, n_styles)
        # An object is present if it shows anywhere: the scene head also sees the strongest
        # response of each channel, which an average over a two-object scene dilutes.
        self.scene_head = nn.Linear(width * 8, n_objects) if scene_head else None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images``: ``[N, 3, 32, 32]`` in [0, 1]. Returns object and style logits."""
        h = self.features(images * 2 - 1).mean(dim=(2, 3))
        return self.object_head(h), self.style_head(h)

    def all_heads(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Object, style and scene (one logit per object, multi-label) logits."""
        if self.scene_head is None:
            raise ValueError("this classifier has no scene head: retrain it")
        maps = self.features(images * 2 - 1)
        h = maps.mean(dim=(2, 3))
        both = torch.cat([h, maps.amax(dim=(2, 3))], dim=1)
        return self.object_head(h), self.style_head(h), self.scene_head(both)

    @torch.no_grad()
    def _batched(
        self, images: Any, batch_size: int, head: Callable[[Tensor], tuple[Tensor, ...]]
    ) -> list[np.ndarray]:
        """``head`` run over ``images`` in batches, in eval mode; one array per output."""
        x = to_tensor(images)
        was_training = self.training
        self.eval()
        try:
            parts = [
                [out.cpu() for out in head(x[i : i + batch_size].to(self._device()))]
                for i in range(0, len(x), batch_size)
            ]
        finally:
            self.train(was_training)
        return [torch.cat(outs).numpy() for outs in zip(*parts, strict=True)]

    def detect(self, images: Any, batch_size: int = 256) -> np.ndarray:
        """``[N, n_objects]`` probabilities that each object is in each picture."""
        (found,) = self._batched(
            images, batch_size, lambda x: (torch.sigmoid(self.all_heads(x)[2]),)
        )
        return found

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def predict(self, images: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Object and style indices for PIL images, uint8 arrays or [0, 1] tensors."""
        objects, styles = self._batched(
            images, batch_size, lambda x: tuple(logits.argmax(-1) for logits in self(x))
        )
        return objects, styles

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write_safetensors(folder / WEIGHTS, self.state_dict())
        atomic_write_json(
            folder / CONFIG,
            {
                "width": self.width,
                "objects": OBJECTS,
                "styles": STYLES,
                "scene_head": self.scene_head is not None,
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> MiniCanvasClassifier:
        folder = Path(folder)
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        model = cls(
            width=int(cfg["width"]),
            n_objects=len(cfg["objects"]),
            n_styles=len(cfg["styles"]),
            scene_head=bool(cfg.get("scene_head", False)),
        )
        model.load_state_dict(load_file(folder / WEIGHTS))
        return model.eval()


def to_tensor(images: Any) -> Tensor:
    if torch.is_tensor(images):
        return images.float()
    arrays = np.stack(
        [np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images]
    )
    if arrays.shape[1:3] != (32, 32):
        arrays = np.stack(
            [np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR)) for a in arrays]
        )
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255.0


def _gaussian_kernel(sigma: float) -> Tensor:
    radius = 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k[:, None] * k[None, :]) / k.sum() ** 2
    return k.expand(3, 1, 2 * radius + 1, 2 * radius + 1)


def _augment(x: Tensor, generator: torch.Generator) -> Tensor:
    # Blur, colour jitter and noise: the judge must recognise a shape or a style that a
    # generator (or its autoencoder) renders softly, as a person would.
    x = x.clone()
    n = x.shape[0]
    blur = torch.rand(n, generator=generator) < 0.5
    if blur.any():
        sigma = float(0.4 + 0.8 * torch.rand((), generator=generator))
        x[blur] = F.conv2d(
            F.pad(x[blur], (2, 2, 2, 2), mode="replicate"), _gaussian_kernel(sigma), groups=3
        )
    gain = 1 + 0.1 * (torch.rand(n, 3, 1, 1, generator=generator) - 0.5)
    noise = torch.randn(x.shape, generator=generator) * 0.03
    return (x * gain + noise).clamp(0, 1)


def train_classifier(
    n_images: int = 20000,
    steps: int = 1500,
    batch_size: int = 128,
    seed: int = 0,
    n_scenes: int = 20000,
) -> tuple[MiniCanvasClassifier, dict[str, float]]:
    """The object and style heads learn from pictures of one object, the scene head (and
    the style head) from those and from two-object scenes."""
    torch.manual_seed(seed)
    images, objects, styles = sample_images(n_images, seed=seed + 1000)
    scenes, scene_objects, scene_styles = sample_scenes(n_scenes, seed=seed + 1500)
    x = to_tensor(np.concatenate([images, scenes]))
    present = torch.zeros(len(x), len(OBJECTS))
    present[torch.arange(n_images), torch.from_numpy(objects)] = 1
    for column in range(2):
        present[torch.arange(n_images, len(x)), torch.from_numpy(scene_objects[:, column])] = 1
    y_obj = torch.from_numpy(np.concatenate([objects, np.full(n_scenes, -100)]))
    y_sty = torch.from_numpy(np.concatenate([styles, scene_styles]))
    model = MiniCanvasClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="classifier", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        o, s, scene = model.all_heads(_augment(x[idx], generator))
        # Scenes carry no single object label (-100 is ignored).
        loss = (
            F.cross_entropy(o, y_obj[idx], ignore_index=-100)
            + F.cross_entropy(s, y_sty[idx])
            + F.binary_cross_entropy_with_logits(scene, present[idx])
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return model, evaluate_classifier(model, seed=seed + 2000)


def evaluate_classifier(
    model: MiniCanvasClassifier, n_images: int = 2000, seed: int = 7
) -> dict[str, float]:
    """Accuracy of every head on freshly drawn (held-out) procedural images and scenes."""
    images, objects, styles = sample_images(n_images, seed=seed)
    pred_obj, pred_sty = model.predict(images)
    result: dict[str, float] = {
        "object_accuracy": float((pred_obj == objects).mean()),
        "style_accuracy": float((pred_sty == styles).mean()),
        "n_images": n_images,
    }
    if model.scene_head is not None:
        scenes, scene_objects, scene_styles = sample_scenes(n_images // 2, seed=seed + 1)
        found = model.detect(scenes) > PRESENT
        truth = np.zeros_like(found)
        for column in range(2):
            truth[np.arange(len(truth)), scene_objects[:, column]] = True
        result["scene_exact_accuracy"] = float((found == truth).all(axis=1).mean())
        result["scene_style_accuracy"] = float((model.predict(scenes)[1] == scene_styles).mean())
        single = model.detect(images) > PRESENT
        result["single_detect_accuracy"] = float(
            (single == np.eye(len(OBJECTS), dtype=bool)[objects]).all(axis=1).mean()
        )
        result["n_scenes"] = len(scenes)
    return result
