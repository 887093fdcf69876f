"""The whole chain on the tiny transformer pipelines (SD3, FLUX, PixArt), through the command
line and through the Python API: capture -> train -> concept features (contrastive and
shortcut) -> erase -> eval; the slider's studio is in tests/ui/test_studio_dit.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saeuron.cli.main import main
from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.features import ConceptFeatures
from saeuron.erasure.technique import SAeUron
from saeuron.sae import Sae
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.trainer import TrainConfig, Trainer

CHAINS = {
    "tiny-sd3": "transformer.transformer_blocks.1",
    "tiny-flux": "transformer.single_transformer_blocks.0",
    "tiny-pixart": "transformer.transformer_blocks.1",
}
SLOW = {"tiny-sd3", "tiny-pixart"}
"""Chains left to the slow tier: one transformer pipeline per interface keeps the default
tier short; every model runs both interfaces with -m slow."""


def _models(default: str) -> list:
    return [
        pytest.param(m, marks=() if m == default else pytest.mark.slow) for m in CHAINS
    ]


@pytest.fixture(autouse=True)
def _setup(monkeypatch, tmp_path):
    """One torch thread: the models are tiny and a second thread only contends on a shared
    machine."""
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _prompt_files(tmp_path: Path) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "\n".join(f"a {o} in {s} style" for o in ("cat", "dog", "tree") for s in ("ink", "oil"))
    )
    others = tmp_path / "others.txt"
    others.write_text("a house\na road\na lake\na chair\n")
    return prompts, others


@pytest.mark.parametrize("model", _models("tiny-flux"))
def test_dit_chain_through_the_command_line(model: str, tmp_path: Path) -> None:
    hook = CHAINS[model]
    prompts, others = _prompt_files(tmp_path)
    common = ["--model", model, "--num-inference-steps", "2", "--guidance-scale", "4"]
    assert main(["cache", *common, "--hookpoint", hook, "--prompts", str(prompts),
                 "--out", str(tmp_path / "acts"), "--max-shard-mb", "0.05"]) == 0
    manifest = json.loads((tmp_path / "acts" / "manifest.json").read_text())
    assert manifest["rows_per_prompt"] == 1 and manifest["d_in"] == 32
    assert main(["train", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "sae"),
                 "--k", "4", "--expansion-factor", "4", "--batch-size", "128",
                 "--epochs", "2"]) == 0
    sae = Sae.from_pretrained(tmp_path / "sae", hookpoint=hook)
    assert sae.meta["hookpoint"] == hook and sae.num_latents == 128
    sae_args = ["--sae", str(tmp_path / "sae"), "--hookpoint", hook]
    assert main(["concept", "build", "cat", *common, *sae_args, "--others", str(others),
                 "--num-prompts", "4", "--tau", "2", "--out", str(tmp_path / "cat")]) == 0
    contrastive = ConceptFeatures.load(tmp_path / "cat")
    assert contrastive.num_steps == 2 and contrastive.indices.shape == (2, 2)
    assert contrastive.hookpoint == hook
    assert main(["concept", "build", "cat", *common, *sae_args, "--method", "shortcut",
                 "--shortcut-step", "1", "--shortcut-images", "2", "--tau", "3",
                 "--out", str(tmp_path / "cat_shortcut")]) == 0
    shortcut = ConceptFeatures.load(tmp_path / "cat_shortcut")
    assert shortcut.num_steps == 1 and shortcut.indices.shape == (1, 3)
    for features in ("cat", "cat_shortcut"):
        out = tmp_path / f"{features}.png"
        assert main(["generate", "--erase", "cat", "--prompt", "a cat in ink style",
                     "--out", str(out), *common, *sae_args, "--features",
                     str(tmp_path / features), "--multiplier", "-20", "--side-by-side",
                     "--device", "cpu"]) == 0
        pair = np.asarray(Image.open(out))
        half = pair.shape[1] // 2
        original, erased = pair[:, :half], pair[:, half:]
        assert original.shape == erased.shape
        assert not np.array_equal(original, erased), features
    # saeuron eval: the technique on this model, erased against unerased images.
    config = {
        "output_dir": str(tmp_path / "eval"),
        "technique": {"name": "saeuron", "config": {
            "erase_concept": "cat", "model": model, "sae": str(tmp_path / "sae"),
            "hookpoint": hook, "features": str(tmp_path / "cat"), "multiplier": -20.0,
            "num_inference_steps": 2, "guidance_scale": 4.0, "device": "cpu", "batch_size": 2,
        }},
        "metric": {"name": "preservation", "config": {"limit": 2}},
        "bootstrap": 50,
    }  # fmt: skip
    (tmp_path / "eval.json").write_text(json.dumps(config))
    assert main(["eval", "-c", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    values = report["metrics"]["preservation"]["values"]
    assert 0 < values["ssim"] <= 1 and values["psnr"] > 0
    images = sorted((tmp_path / "eval" / "preservation").rglob("*.png"))
    assert len(images) == 4  # two prompts, erased and unerased


@pytest.mark.parametrize("model", _models("tiny-sd3"))
def test_dit_chain_through_the_api(model: str, tmp_path: Path) -> None:
    hook = CHAINS[model]
    prompts, others = _prompt_files(tmp_path)
    sampling = {"num_inference_steps": 2, "guidance_scale": 4.0, "device": "cpu"}
    manifest = run_cache(CacheConfig(model=model, hookpoint=hook, prompts=str(prompts),
                                     out=str(tmp_path / "acts"), max_shard_mb=0.05,
                                     **sampling))  # fmt: skip
    assert manifest["n_tokens"] == 6 * 2 * manifest["tokens_per_step"]
    trainer = Trainer(TrainConfig.from_dict({
        "activations": str(tmp_path / "acts"), "out": str(tmp_path / "sae"), "k": 4,
        "expansion_factor": 4, "batch_size": 128, "epochs": 2}))  # fmt: skip
    trainer.train()
    sae = Sae.from_pretrained(tmp_path / "sae", hookpoint=hook)
    built = {}
    for method in ("contrastive", "shortcut"):
        cfg = ConceptBuildConfig.from_dict({
            "concept": "cat", "model": model, "sae": str(tmp_path / "sae"), "hookpoint": hook,
            "method": method, "num_prompts": 4, "tau": 2, "shortcut_step": 1,
            "shortcut_images": 2, "others": str(others) if method == "contrastive" else None,
            "out": str(tmp_path / method), **sampling})  # fmt: skip
        built[method] = build_concept(cfg, sae=sae)
        assert built[method].hookpoint == hook
    assert built["contrastive"].num_steps == 2 and built["shortcut"].num_steps == 1
    tech = SAeUron(erase_concept="cat", model=model, sae=str(tmp_path / "sae"), hookpoint=hook,
                   features=str(tmp_path / "contrastive"), multiplier=-20.0,
                   **sampling)  # fmt: skip
    prompt = ["a cat in ink style"]
    erased = np.asarray(tech.generate(prompt, seed=3)[0])
    plain = np.asarray(tech.generate(prompt, seed=3, erase_concept=False)[0])
    again = np.asarray(tech.generate(prompt, seed=3, erase_concept=False)[0])
    assert not np.array_equal(erased, plain)
    assert np.array_equal(plain, again)
    # Unerased images are the stock pipeline's, bit for bit.
    stock = tech.pipe(prompt, generator=[torch.Generator("cpu").manual_seed(3)],
                      num_inference_steps=2, guidance_scale=4.0).images[0]  # fmt: skip
    assert np.array_equal(plain, np.asarray(stock))
