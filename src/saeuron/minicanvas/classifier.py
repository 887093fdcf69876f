"""The MiniCanvas judge: a small CNN with an object head and a style head.

It plays the role of UnlearnCanvas' ViT classifiers. Trained on procedural images only;
stored as ``classifier.safetensors`` + ``classifier.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from saeuron.minicanvas.world import OBJECTS, STYLES, sample_images
from saeuron.utils.io import atomic_write_json, atomic_write_safetensors

logger = logging.getLogger(__name__)

WEIGHTS = "classifier.safetensors"
CONFIG = "classifier.json"


class MiniCanvasClassifier(nn.Module):
    def __init__(self, width: int = 32, n_objects: int = len(OBJECTS), n_styles: int = len(STYLES)):
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
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.object_head = nn.Linear(width * 4, n_objects)
        self.style_head = nn.Linear(width * 4, n_styles)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images``: ``[N, 3, 32, 32]`` in [0, 1]. Returns object and style logits."""
        h = self.features(images * 2 - 1)
        return self.object_head(h), self.style_head(h)

    @torch.no_grad()
    def predict(self, images: Any, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Object and style indices for PIL images, uint8 arrays or [0, 1] tensors."""
        x = to_tensor(images)
        was_training = self.training
        self.eval()
        objects, styles = [], []
        for start in range(0, len(x), batch_size):
            o, s = self(x[start : start + batch_size].to(next(self.parameters()).device))
            objects.append(o.argmax(-1).cpu())
            styles.append(s.argmax(-1).cpu())
        self.train(was_training)
        return torch.cat(objects).numpy(), torch.cat(styles).numpy()

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        atomic_write_safetensors(folder / WEIGHTS, self.state_dict())
        atomic_write_json(
            folder / CONFIG, {"width": self.width, "objects": OBJECTS, "styles": STYLES}
        )

    @classmethod
    def load(cls, folder: str | Path) -> MiniCanvasClassifier:
        folder = Path(folder)
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
        model = cls(
            width=int(cfg["width"]), n_objects=len(cfg["objects"]), n_styles=len(cfg["styles"])
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
    n_images: int = 20000, steps: int = 600, batch_size: int = 128, seed: int = 0
) -> tuple[MiniCanvasClassifier, dict[str, float]]:
    torch.manual_seed(seed)
    images, objects, styles = sample_images(n_images, seed=seed + 1000)
    x = to_tensor(images)
    y_obj, y_sty = torch.from_numpy(objects), torch.from_numpy(styles)
    model = MiniCanvasClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    bar = tqdm(range(steps), desc="classifier", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(x), (batch_size,), generator=generator)
        o, s = model(_augment(x[idx], generator))
        loss = F.cross_entropy(o, y_obj[idx]) + F.cross_entropy(s, y_sty[idx])
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
    """Accuracy of both heads on freshly drawn (held-out) procedural images."""
    images, objects, styles = sample_images(n_images, seed=seed)
    pred_obj, pred_sty = model.predict(images)
    return {
        "object_accuracy": float((pred_obj == objects).mean()),
        "style_accuracy": float((pred_sty == styles).mean()),
        "n_images": n_images,
    }
