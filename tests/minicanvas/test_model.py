"""The MiniCanvas training recipe, run for a few steps: reproducible from its seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from saeuron.minicanvas.model import ModelTrainConfig, train_minicanvas
from saeuron.utils.config import ConfigError

TINY = dict(
    n_images=100, n_scenes=20, vae_steps=3, vae_batch=8, unet_steps=3, unet_batch=8,
    device="cpu",
)


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


@pytest.mark.slow
def test_fine_tuning_starts_from_a_saved_pipeline_and_reuses_its_autoencoder(tmp_path) -> None:
    base = train_minicanvas(ModelTrainConfig(out=str(tmp_path / "base"), **TINY))
    tuned = train_minicanvas(
        ModelTrainConfig(
            out=str(tmp_path / "tuned"), vae_from=str(base), init_from=str(base), seed=1, **TINY
        )
    )
    before, after = _weights(base), _weights(tuned)
    # The autoencoder is the same one (up to the scaling factor in its config) ...
    for key, value in before["vae"].items():
        assert torch.equal(value, after["vae"][key]), key
    # ... the denoiser moved from the saved weights, not from a fresh initialisation.
    key = "conv_in.weight"
    moved = (after["unet"][key].float() - before["unet"][key].float()).abs().max().item()
    assert 0 < moved < 0.05
    _check_saved_pipeline(tuned)


@pytest.mark.parametrize("field_name", ["vae_from", "init_from"])
def test_a_missing_pipeline_to_start_from_names_the_field(tmp_path, field_name) -> None:
    cfg = ModelTrainConfig(out=str(tmp_path / "m"), **{**TINY, field_name: str(tmp_path)})
    with pytest.raises(ConfigError, match=f"^{field_name}:"):
        train_minicanvas(cfg)
