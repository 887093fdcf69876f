"""The slider's studio on transformer pipelines: a free-text concept's features are found on
a DiT block, the slider's erasure changes the image and the unerased image stays
bit-identical however the slider moves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from saeuron.sae import Sae, SaeConfig
from saeuron.ui import UiConfig
from saeuron.ui.studio import Session, Settings, Studio

CASES = [
    ("tiny-flux", "transformer.transformer_blocks.1"),
    pytest.param("tiny-sd3", "transformer.transformer_blocks.2", marks=pytest.mark.slow),
    pytest.param("tiny-pixart", "transformer.transformer_blocks.0", marks=pytest.mark.slow),
]


@pytest.fixture(autouse=True)
def _setup(monkeypatch, tmp_path):
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bits(images) -> list[np.ndarray]:
    return [np.asarray(image) for image in images]


@pytest.mark.parametrize(("model", "hook"), CASES)
def test_slider_on_a_transformer_block(model: str, hook: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    sae = Sae(SaeConfig(d_in=32, expansion_factor=4, k=8))
    sae.meta["hookpoint"] = hook
    sae.save_to_disk(tmp_path / "sae" / hook)
    studio = Studio(UiConfig(model=model, sae=str(tmp_path / "sae"), hookpoint=hook, steps=2,
                             feature_images=2, device="cpu"))  # fmt: skip
    settings = Settings(prompt="a cat on a sofa", steps=2, seed=7, guidance_scale=4.0)
    session = Session()
    plain = bits(session.render_unerased(studio, settings))
    erased = {}
    for gamma in (-1.0, -50.0):
        erased[gamma] = bits(session.render_erased(studio, settings, [("a cat", gamma)]))
        # The unerased image is cached per settings and sampled again bit-identically.
        assert all(np.array_equal(a, b) for a, b in zip(plain, bits(studio.generate(settings))))
    features, _, hookpoint = studio.features("a cat")
    assert hookpoint == hook and features.hookpoint == hook and features.latents()
    assert not np.array_equal(erased[-50.0][0], plain[0])
    assert not np.array_equal(erased[-50.0][0], erased[-1.0][0])
