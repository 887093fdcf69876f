"""SSIM and PSNR."""

from __future__ import annotations

import numpy as np
import pytest

from saeuron.eval.similarity import psnr, ssim


def test_ssim_and_psnr_see_identity_and_damage() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
    noisier = np.clip(a + rng.normal(0, 60, a.shape), 0, 255).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == 100.0
    assert 1.0 > ssim(a, noisy) > ssim(a, noisier)
    assert 100.0 > psnr(a, noisy) > psnr(a, noisier) > 0
    # PSNR of a known error: every pixel off by 10 -> 10 log10(255^2 / 100).
    shifted = np.clip(a.astype(int) + 10, 0, 255)
    mse = ((shifted - a) ** 2).mean()
    assert psnr(a, shifted) == pytest.approx(10 * np.log10(255**2 / mse))
    with pytest.raises(ValueError, match="differ in size"):
        ssim(a, a[:16])
