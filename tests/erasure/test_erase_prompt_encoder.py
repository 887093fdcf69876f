"""An SAE inside the text encoder: captured without sampling, erased at every encoder call."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from saeuron.erasure.erase import erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.prompt_encoders import encode_prompts, prompt_encoder_of, tokenizer_name
from saeuron.sae import Sae, SaeConfig
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.utils.config import ConfigError

HOOK = "text_encoder.final_layer_norm"
PROMPTS = ["a cat", "a dog on a sofa", "a red car"]


@pytest.fixture(scope="module")
def sae(tiny_sd) -> Sae:
    torch.manual_seed(5)
    width = tiny_sd.text_encoder.config.hidden_size
    sae = Sae(SaeConfig(d_in=width, expansion_factor=4, k=4))
    sae.meta["hookpoint"] = HOOK
    return sae


def sample(pipe) -> np.ndarray:
    out = pipe(
        "a cat", num_inference_steps=2, guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0), output_type="np",
    )  # fmt: skip
    return np.asarray(out.images)


@pytest.fixture(scope="module")
def idx(tiny_sd, sae) -> list[int]:
    """The four latents most often active on the prompt's tokens: edits that happen."""
    plain = encode_prompts(tiny_sd, "text_encoder", ["a cat"])
    with torch.no_grad():
        dense = sae.encode_dense(plain.reshape(-1, plain.shape[-1]))
    return (dense > 0).sum(0).topk(4).indices.tolist()


def features(idx: list[int], threshold: float, gamma_rows: int = 1) -> ConceptFeatures:
    return ConceptFeatures(
        "cat", indices=torch.tensor([idx] * gamma_rows), mean=torch.ones(gamma_rows, 4),
        threshold=torch.full((gamma_rows, 4), threshold),
    )  # fmt: skip


def test_component_names() -> None:
    assert prompt_encoder_of(HOOK) == "text_encoder"
    assert prompt_encoder_of("text_encoder_2.text_model.encoder.layers.0") == "text_encoder_2"
    assert prompt_encoder_of("unet.up_blocks.1.attentions.1") is None
    assert tokenizer_name("text_encoder_3") == "tokenizer_3"


def test_capture_records_each_prompts_encoder_output(tiny_sd, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    out = tmp_path / "acts"
    manifest = run_cache(CacheConfig(
        model="tiny-sd", hookpoint=HOOK, prompts=str(prompts), out=str(out),
        num_inference_steps=3, batch_size=2, dtype="float32",
    ))  # fmt: skip
    assert manifest["steps"] == [0] and manifest["num_inference_steps"] == 1
    tokens = tiny_sd.tokenizer.model_max_length
    width = tiny_sd.text_encoder.config.hidden_size
    assert manifest["tokens_per_step"] == tokens and manifest["d_in"] == width
    data = load_file(str(out / "shard_00000.safetensors"))
    assert data["activations"].shape == (len(PROMPTS) * tokens, width)
    assert data["step"].unique().tolist() == [0]
    assert torch.bincount(data["prompt"]).tolist() == [tokens] * len(PROMPTS)
    # The stored tokens are the encoder's output for each prompt, in prompt order.
    expected = encode_prompts(tiny_sd, "text_encoder", PROMPTS).reshape(-1, width)
    torch.testing.assert_close(data["activations"], expected, atol=1e-6, rtol=1e-6)
    assert json.loads((out / "manifest.json").read_text())["hookpoint"] == HOOK


@pytest.mark.parametrize("site", ["guidance", "update"])
def test_capture_refuses_denoiser_sites(tmp_path: Path, site: str) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="prompt encoder") as err:
        CacheConfig(model="tiny-sd", hookpoint=HOOK, prompts=str(prompts),
                    out=str(tmp_path / "o"), activation_site=site)  # fmt: skip
    assert err.value.field == "activation_site"


def test_edit_of_the_prompt_embeddings(tiny_sd, sae, idx) -> None:
    plain = encode_prompts(tiny_sd, "text_encoder", ["a cat"])
    feats = features(idx, threshold=0.0)
    with erase(tiny_sd, sae, feats, multiplier=-1.0, rule="scale") as erasure:
        edited = encode_prompts(tiny_sd, "text_encoder", ["a cat"])
    assert erasure.calls == 1 and erasure.edited_tokens > 0
    flat = plain.reshape(-1, plain.shape[-1])
    with torch.no_grad():
        a = sae.encode_dense(flat)[:, idx]
        # scale rule: a <- gamma * mu * a where a > thr (mu = 1, gamma = -1).
        a_new = torch.where(a > 0.0, -a, a)
        expected = flat + (a_new - a) @ sae.W_dec[idx]
    torch.testing.assert_close(edited.reshape(flat.shape), expected, atol=1e-5, rtol=1e-5)


def test_images_change_only_while_erasing(tiny_sd, sae, idx) -> None:
    before = sample(tiny_sd)
    with erase(tiny_sd, sae, features(idx, threshold=0.0), multiplier=-2.0) as erasure:
        erased = sample(tiny_sd)
    # The prompt and the negative prompt each pass through the encoder once.
    assert erasure.calls == 2
    assert np.abs(erased - before).max() > 1e-3
    with erase(tiny_sd, sae, features(idx, threshold=1e9), multiplier=-2.0, warn_unedited=False):
        untouched = sample(tiny_sd)
    np.testing.assert_array_equal(untouched, before)
    np.testing.assert_array_equal(sample(tiny_sd), before)


@pytest.mark.parametrize(
    ("kwargs", "rows", "field"),
    [
        ({"window": [0.0, 0.5]}, 1, "window"),
        ({"activation_site": "guidance"}, 1, "activation_site"),
        ({}, 3, "concepts"),
    ],
)
def test_refused_before_sampling(tiny_sd, sae, idx, kwargs, rows, field) -> None:
    with pytest.raises(ConfigError) as err:
        with erase(tiny_sd, sae, features(idx, 0.0, gamma_rows=rows), multiplier=-1.0, **kwargs):
            pass
    assert err.value.field == field


def test_either_transformers_name_of_the_layer(tiny_sd) -> None:
    from saeuron.models.hookpoints import resolve_module

    module = resolve_module(tiny_sd, HOOK)
    other = "text_encoder.text_model.final_layer_norm"
    assert resolve_module(tiny_sd, other) is module
    with pytest.raises(ConfigError):
        resolve_module(tiny_sd, "text_encoder.text_model.no_such_layer")
    with pytest.raises(ConfigError, match="name a layer inside it"):
        resolve_module(tiny_sd, "text_encoder")


def test_sdxl_reads_the_second_to_last_layer_and_is_erased_there(tiny_sdxl) -> None:
    from saeuron.models.hookpoints import resolve_module

    # SDXL's pipeline takes hidden_states[-2] of its encoders: the edit must reach it.
    layers = tiny_sdxl.text_encoder.config.num_hidden_layers
    hook = f"text_encoder.encoder.layers.{layers - 2}"
    module = resolve_module(tiny_sdxl, hook)
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(
        lambda m, i, o: seen.append((o[0] if isinstance(o, tuple) else o).detach())
    )
    try:
        encode_prompts(tiny_sdxl, "text_encoder", ["a cat"])
    finally:
        handle.remove()
    width = seen[0].shape[-1]
    torch.manual_seed(6)
    sae = Sae(SaeConfig(d_in=width, expansion_factor=4, k=4))
    sae.meta["hookpoint"] = hook
    with torch.no_grad():
        dense = sae.encode_dense(seen[0].reshape(-1, width))
    idx = (dense > 0).sum(0).topk(4).indices.tolist()

    def sdxl_sample() -> np.ndarray:
        return np.asarray(tiny_sdxl(
            "a cat", num_inference_steps=2, guidance_scale=5.0, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images)  # fmt: skip

    before = sdxl_sample()
    with erase(tiny_sdxl, sae, features(idx, threshold=0.0), multiplier=-2.0) as erasure:
        erased = sdxl_sample()
    assert erasure.edited_tokens > 0
    assert np.abs(erased - before).max() > 1e-3
    np.testing.assert_array_equal(sdxl_sample(), before)


def test_concept_build_reads_the_encoder_alone_and_erases(tiny_sd, sae, tmp_path: Path) -> None:
    from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept

    others = tmp_path / "others.txt"
    others.write_text("a bowl of fruit\na quiet street\n", encoding="utf-8")
    cfg = ConceptBuildConfig(
        concept="cat", model="tiny-sd", sae="unused", hookpoint=HOOK, num_prompts=2,
        others=str(others), num_inference_steps=3, batch_size=2, tau=3,
        cache_dir=str(tmp_path / "cache"),
    )  # fmt: skip
    unet_calls: list[int] = []
    handle = tiny_sd.unet.register_forward_pre_hook(lambda m, a: unet_calls.append(1))
    try:
        feats = build_concept(cfg, pipe=tiny_sd, sae=sae)
    finally:
        handle.remove()
    assert unet_calls == [], "statistics of a text-encoder hookpoint sample nothing"
    assert feats.num_steps == 1 and feats.hookpoint == HOOK and len(feats.at(0)[0]) == 3
    before = sample(tiny_sd)
    with erase(tiny_sd, sae, feats, multiplier=-3.0) as erasure:
        erased = sample(tiny_sd)
    assert erasure.edited_tokens > 0 and np.abs(erased - before).max() > 1e-3
    with pytest.raises(ConfigError) as err:
        build_concept(cfg.replace(method="shortcut"), pipe=tiny_sd, sae=sae)
    assert err.value.field == "method"
