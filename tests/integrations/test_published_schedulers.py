"""The whole chain on tiny pipelines that carry the schedulers the stock models publish.

cache -> train -> concept build (contrastive and shortcut) -> erase, once through the CLI and
once through the Python API, for SD 1.4 (PNDM), SD 2.1 (DDIM, v-prediction), SDXL base
(Euler) and SDXL-Turbo (Euler ancestral, trailing spacing, no CFG). Every stage samples with
the pipeline's own scheduler (``scheduler="pipeline"``): the stock one is what breaks step
tracking when anything does. The default tier runs one configuration per entry point; the
rest are slow.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from saeuron.cli.main import main
from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept
from saeuron.erasure.erase import erase
from saeuron.erasure.features import ConceptFeatures
from saeuron.models.sampling import seed_generators
from saeuron.models.tiny import PUBLISHED_SCHEDULERS, TINY_PUBLISHED, build_tiny
from saeuron.sae import Sae
from saeuron.training.capture import CacheConfig, run_cache
from saeuron.training.trainer import TrainConfig, train_sae

PROMPTS = [f"a {o} in {s} style" for o in ("cat", "dog", "tree") for s in ("ink", "oil")]
OTHERS = ["a house", "a road", "a lake", "a chair"]


class Setting:
    """How one published model is sampled in the chain."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.turbo = model == "tiny-sdxl-turbo"
        sdxl = TINY_PUBLISHED[model][0] == "tiny-sdxl"
        # SDXL's SAEs (sdxl-unbox) read an up block's first attention; SD 1.x's the middle one.
        self.hook = "unet.up_blocks.0.attentions.1" if sdxl else "unet.up_blocks.1.attentions.1"
        self.steps = 2 if self.turbo else 3
        # SDXL-Turbo samples without CFG: the batch is all conditional, every row is read.
        self.guidance = 0.0 if self.turbo else 7.5
        self.guidance_half = "both" if self.turbo else "cond"

    def sampling(self) -> dict[str, Any]:
        return dict(num_inference_steps=self.steps, guidance_scale=self.guidance,
                    scheduler="pipeline", batch_size=2)  # fmt: skip

    def flags(self) -> list[str]:
        return ["--model", self.model, "--num-inference-steps", str(self.steps),
                "--guidance-scale", str(self.guidance), "--scheduler", "pipeline",
                "--batch-size", "2"]  # fmt: skip


def _models(fast: str) -> list[Any]:
    return [
        pytest.param(m) if m == fast else pytest.param(m, marks=pytest.mark.slow)
        for m in TINY_PUBLISHED
    ]


@pytest.fixture(autouse=True)
def _one_thread(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _files(tmp_path: Path) -> tuple[Path, Path]:
    prompts, others = tmp_path / "prompts.txt", tmp_path / "others.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    others.write_text("\n".join(OTHERS) + "\n")
    return prompts, others


def check_capture(acts: Path, s: Setting) -> None:
    """Each step holds one row per prompt (rows per prompt x tokens each): none lost or doubled."""
    manifest = json.loads((acts / "manifest.json").read_text())
    rows = manifest["rows_per_prompt"]
    assert rows == 1
    tokens = manifest["tokens_per_step"]
    parts = [load_file(str(acts / f"shard_{x['index']:05d}.safetensors"))
             for x in manifest["shards"]]  # fmt: skip
    step = torch.cat([p["step"] for p in parts])
    prompt = torch.cat([p["prompt"] for p in parts])
    assert manifest["n_tokens"] == step.numel() == len(PROMPTS) * s.steps * rows * tokens
    for k in range(s.steps):
        at = prompt[step == k]
        assert at.numel() == len(PROMPTS) * rows * tokens, k
        assert sorted(set(at.tolist())) == list(range(len(PROMPTS))), k
    assert torch.isfinite(torch.cat([p["activations"] for p in parts])).all()


def check_trained(sae_dir: Path, s: Setting) -> Sae:
    sae = Sae.from_pretrained(sae_dir, hookpoint=s.hook)
    assert sae.meta["hookpoint"] == s.hook and sae.meta["training"]["epochs_done"] == 3
    # The loss fell: each epoch's mean training FVU is below the one before.
    log = json.loads((sae_dir / s.hook / "train_log.json").read_text())
    fvu = [epoch["train_fvu"] for epoch in log["epochs"]]
    assert len(fvu) == 3 and fvu[0] > fvu[1] > fvu[2], fvu
    return sae


def check_features(features: ConceptFeatures, s: Setting, method: str) -> None:
    # Contrastive: latents per step; shortcut: one set read at one step, used at every step.
    rows = s.steps if method == "contrastive" else 1
    assert features.num_steps == rows and features.indices.shape == (rows, 2), method
    assert ((features.indices >= 0) & (features.indices < 128)).all()


def cli(*args: str) -> None:
    assert main(list(args)) == 0, args


def stock_image(s: Setting, prompt: str) -> np.ndarray:
    """The stock pipeline, no hook anywhere, as the CLI seeds it."""
    pipe = build_tiny(s.model)
    out = pipe([prompt], num_inference_steps=s.steps, guidance_scale=s.guidance,
               generator=seed_generators([0]))  # fmt: skip
    return np.asarray(out.images[0])


@pytest.mark.parametrize("model", _models("tiny-sd14"))
def test_chain_through_the_cli(model: str, tmp_path: Path) -> None:
    s = Setting(model)
    prompts, others = _files(tmp_path)
    acts, sae_dir = tmp_path / "acts", tmp_path / "sae"
    cli("cache", *s.flags(), "--hookpoint", s.hook, "--prompts", str(prompts), "--out",
        str(acts), "--guidance-half", s.guidance_half, "--max-shard-mb", "0.05")  # fmt: skip
    check_capture(acts, s)
    cli("train", "--activations", str(acts), "--out", str(sae_dir), "--k", "4",
        "--expansion-factor", "4", "--batch-size", "64", "--epochs", "3")  # fmt: skip
    check_trained(sae_dir, s)
    for method in ("contrastive", "shortcut"):
        out = tmp_path / method
        extra = ["--shortcut-images", "2"] if method == "shortcut" else ["--others", str(others)]
        cli("concept", "build", "cat", *s.flags(), "--sae", str(sae_dir), "--hookpoint",
            s.hook, "--method", method, "--num-prompts", "2", "--tau", "2", "--guidance-half",
            s.guidance_half, "--out", str(out), *extra)  # fmt: skip
        check_features(ConceptFeatures.load(out), s, method)
    image = tmp_path / "cat.png"
    prompt = "a cat in ink style"
    cli("generate", "--erase", "cat", "--prompt", prompt, "--out", str(image), *s.flags(),
        "--sae", str(sae_dir), "--hookpoint", s.hook, "--features", str(tmp_path / "contrastive"),
        "--guidance-half", s.guidance_half, "--multiplier", "-20", "--side-by-side",
        "--device", "cpu")  # fmt: skip
    pair = np.asarray(Image.open(image))
    half = pair.shape[1] // 2
    original, erased = pair[:, :half], pair[:, half:]
    assert not np.array_equal(original, erased)
    # The unerased half is the stock pipeline's image, bit for bit.
    assert np.array_equal(original, stock_image(s, prompt))


@pytest.mark.parametrize("model", _models("tiny-sdxl-turbo"))
def test_chain_through_the_python_api(model: str, tmp_path: Path) -> None:
    s = Setting(model)
    prompts, others = _files(tmp_path)
    acts, sae_dir = tmp_path / "acts", tmp_path / "sae"
    run_cache(CacheConfig(model=model, hookpoint=s.hook, prompts=str(prompts), out=str(acts),
                          guidance_half=s.guidance_half, dtype="float32", max_shard_mb=0.05,
                          **s.sampling()))  # fmt: skip
    check_capture(acts, s)
    trained = train_sae(TrainConfig(activations=str(acts), out=str(sae_dir), k=4,
                                    expansion_factor=4, batch_size=64, epochs=3))  # fmt: skip
    sae = check_trained(sae_dir, s)
    assert torch.equal(trained.W_dec.cpu(), sae.W_dec)  # what train_sae returns is what it saved
    pipe = build_tiny(model)
    stock = PUBLISHED_SCHEDULERS[TINY_PUBLISHED[model][1]]["_class_name"]
    assert type(pipe.scheduler).__name__ == stock
    found = {}
    for method in ("contrastive", "shortcut"):
        extra: dict[str, Any] = (
            {"shortcut_images": 2} if method == "shortcut" else {"others": str(others)}
        )
        cfg = ConceptBuildConfig(concept="cat", model=model, sae=str(sae_dir), hookpoint=s.hook,
                                 method=method,
                                 num_prompts=2, tau=2, guidance_half=s.guidance_half,
                                 **s.sampling(), **extra)  # fmt: skip
        found[method] = build_concept(cfg, pipe=pipe, sae=sae)
        check_features(found[method], s, method)
    # build_concept leaves the pipeline on the scheduler it was asked for: the stock one.
    assert type(pipe.scheduler).__name__ == stock

    def sample() -> np.ndarray:
        out = pipe(["a cat in ink style"], num_inference_steps=s.steps, guidance_scale=s.guidance,
                   generator=seed_generators([0]), output_type="np")  # fmt: skip
        return np.asarray(out.images)

    plain = sample()
    features = found["contrastive"]
    with erase(pipe, sae, features, multiplier=-20.0, guidance_half=s.guidance_half,
               hookpoint=s.hook) as handle:  # fmt: skip
        erased = sample()
    assert handle.edited_tokens > 0
    assert np.isfinite(erased).all() and np.abs(erased - plain).mean() > 1e-4
    # Hooked, but no token reaches a threshold: the stock image, bit for bit.
    unreachable = ConceptFeatures("cat", indices=features.indices, mean=features.mean,
                                  threshold=torch.full(features.indices.shape, 1e6))  # fmt: skip
    with erase(pipe, sae, unreachable, multiplier=-20.0, guidance_half=s.guidance_half,
               hookpoint=s.hook, warn_unedited=False) as handle:  # fmt: skip
        unerased = sample()
    assert handle.edited_tokens == 0
    assert np.array_equal(unerased, plain)
