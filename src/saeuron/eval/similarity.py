"""Image similarity that needs no weights: SSIM and PSNR of two same-sized RGB images.

SSIM follows Wang et al. (2004): an 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01,
K2 = 0.03, on the 0-255 range, computed per channel over "valid" windows and averaged;
images smaller than the window use a window as large as they are.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_K1, _K2, _L = 0.01, 0.03, 255.0


def as_array(image: Any) -> np.ndarray:
    """``H x W x 3`` float64 in 0-255 from a PIL image or an array."""
    array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array.astype(np.float64)


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def _filter(channel: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'valid' correlation of a 2-D array with ``kernel`` along both axes."""
    rows = np.apply_along_axis(lambda r: np.convolve(r, kernel, mode="valid"), 1, channel)
    return np.apply_along_axis(lambda c: np.convolve(c, kernel, mode="valid"), 0, rows)


def ssim(a: Any, b: Any, window: int = 11, sigma: float = 1.5) -> float:
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} and {y.shape}")
    size = min(window, x.shape[0], x.shape[1])
    kernel = _gaussian(size, sigma)
    c1, c2 = (_K1 * _L) ** 2, (_K2 * _L) ** 2
    values = []
    for ch in range(x.shape[2]):
        xc, yc = x[..., ch], y[..., ch]
        mx, my = _filter(xc, kernel), _filter(yc, kernel)
        sxx = _filter(xc * xc, kernel) - mx * mx
        syy = _filter(yc * yc, kernel) - my * my
        sxy = _filter(xc * yc, kernel) - mx * my
        num = (2 * mx * my + c1) * (2 * sxy + c2)
        den = (mx * mx + my * my + c1) * (sxx + syy + c2)
        values.append(float((num / den).mean()))
    return float(np.mean(values))


def psnr(a: Any, b: Any, cap: float = 100.0) -> float:
    """Peak signal-to-noise ratio in dB; identical images get ``cap`` (not infinity)."""
    x, y = as_array(a), as_array(b)
    if x.shape != y.shape:
        raise ValueError(f"images differ in size: {x.shape} and {y.shape}")
    mse = float(((x - y) ** 2).mean())
    if mse == 0:
        return cap
    return float(min(cap, 10 * np.log10(_L**2 / mse)))
