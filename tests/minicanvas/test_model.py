"""The MiniCanvas training recipe, run for a few steps: reproducible from its seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from saeuron.minicanvas.model import ModelTrainConfig, train_minicanvas
from saeuron.utils.config import ConfigError

TINY = dict(n_images=100, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=8, device="cpu")


def _weights(folder) -> dict[str, torch.Tensor]:
    return {
        part: load_file(folder / part / name)
        for part, name in (
            ("unet", "diffusion_pytorch_model.safetensors"),
            ("vae", "diffusion_pytorch_model.safetensors"),
            ("text_encoder", "model.safetensors"),
        )
    }


@pytest.mark.slow
def test_training_is_reproducible_from_its_seed(tmp_path) -> None:
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = train_minicanvas(ModelTrainConfig(out=str(tmp_path / name), seed=seed, **TINY))
        assert (out / "model_index.json").is_file()
        runs[name] = _weights(out)
    for part, tensors in runs["a"].items():
        for key, value in tensors.items():
            assert torch.equal(value, runs["b"][part][key]), (part, key)
    assert any(
        not torch.equal(value, runs["c"]["unet"][key]) for key, value in runs["a"]["unet"].items()
    )
    _check_saved_pipeline(tmp_path / "a")


def _check_saved_pipeline(out) -> None:
    from saeuron.models.pipelines import load_pipeline

    pipe = load_pipeline(str(out), device="cpu")
    image = pipe("An image of star in neon style.", num_inference_steps=2).images[0]
    assert image.size == (32, 32)
    modules = dict(pipe.unet.named_modules())
    # SD's layout: no attention at the lowest resolution, up_blocks.1 one level above it.
    assert "up_blocks.0.attentions.0" not in modules
    assert "up_blocks.1.attentions.2" in modules and "up_blocks.2.attentions.2" in modules


@pytest.mark.parametrize(
    "bad", [{"unet_steps": 0}, {"lr": 0.0}, {"ema_decay": 1.0}, {"caption_dropout": -0.1}]
)
def test_bad_training_settings_name_the_field(bad) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ModelTrainConfig(**bad)
