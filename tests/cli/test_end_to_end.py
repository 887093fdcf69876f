"""The four commands chained on a tiny pipeline, as a user would run them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from saeuron.cli.main import main
from saeuron.erasure.features import ConceptFeatures
from saeuron.sae import Sae

HOOK = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_cache_train_concept_generate(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "\n".join(
            f"An image of {o} in {s} style." for o in ("cat", "dog", "tree") for s in ("ink", "oil")
        )
    )
    others = tmp_path / "others.txt"
    others.write_text("a house\na road\na lake\na chair\n")
    common = ["--model", "tiny-sd", "--num-inference-steps", "3"]
    assert (
        main(
            [
                "cache",
                *common,
                "--hookpoint",
                HOOK,
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "acts"),
                "--max-shard-mb",
                "0.05",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "acts"),
                "--out",
                str(tmp_path / "sae"),
                "--k",
                "4",
                "--expansion-factor",
                "4",
                "--batch-size",
                "128",
                "--epochs",
                "2",
            ]
        )
        == 0
    )
    sae = Sae.from_pretrained(tmp_path / "sae", hookpoint=HOOK)
    assert sae.meta["hookpoint"] == HOOK and sae.num_latents == 128
    assert (
        main(
            [
                "concept",
                "build",
                "cat",
                *common,
                "--sae",
                str(tmp_path / "sae"),
                "--hookpoint",
                HOOK,
                "--others",
                str(others),
                "--num-prompts",
                "4",
                "--tau",
                "2",
                "--out",
                str(tmp_path / "cat"),
            ]
        )
        == 0
    )
    features = ConceptFeatures.load(tmp_path / "cat")
    assert features.num_steps == 3 and features.indices.shape == (3, 2)
    out = tmp_path / "cat.png"
    assert (
        main(
            [
                "generate",
                "--erase",
                "cat",
                "--prompt",
                "An image of cat in ink style.",
                "--out",
                str(out),
                *common,
                "--sae",
                str(tmp_path / "sae"),
                "--hookpoint",
                HOOK,
                "--features",
                str(tmp_path / "cat"),
                "--side-by-side",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    pair = np.asarray(Image.open(out))
    original, erased = pair[:, :32], pair[:, 32:]
    assert original.shape == erased.shape == (32, 32, 3)
    assert not np.array_equal(original, erased)


def test_sdxl_turbo_chain_without_guidance_on_the_block_update(tmp_path, monkeypatch) -> None:
    # The SDXL-Turbo setting: SDXL-Turbo samples in 1 to 4 steps with guidance 0 (no CFG); the
    # SAE reads the update of unet.up_blocks.0.attentions.1 (output - input, as sdxl-unbox).
    monkeypatch.setenv("SAEURON_CACHE", str(tmp_path / "cache"))
    hook = "unet.up_blocks.0.attentions.1"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "\n".join(f"a {o} in {s} style" for o in ("cat", "dog", "tree") for s in ("ink", "oil"))
    )
    others = tmp_path / "others.txt"
    others.write_text("a house\na road\na lake\na chair\n")
    turbo = ["--model", "tiny-sdxl", "--num-inference-steps", "2", "--guidance-scale", "0"]
    assert main(["cache", *turbo, "--hookpoint", hook, "--prompts", str(prompts),
                 "--out", str(tmp_path / "acts"), "--activation-site", "update"]) == 0
    assert main(["train", "--activations", str(tmp_path / "acts"), "--out", str(tmp_path / "sae"),
                 "--k", "4", "--expansion-factor", "4", "--batch-size", "64",
                 "--epochs", "2"]) == 0  # fmt: skip
    sae = Sae.from_pretrained(tmp_path / "sae", hookpoint=hook)
    assert sae.meta["hookpoint"] == hook and sae.meta.get("activation_site") == "update"
    assert main(["concept", "build", "cat", *turbo, "--sae", str(tmp_path / "sae"),
                 "--hookpoint", hook, "--others", str(others), "--num-prompts", "4",
                 "--tau", "2", "--out", str(tmp_path / "cat")]) == 0  # fmt: skip
    features = ConceptFeatures.load(tmp_path / "cat")
    assert features.num_steps == 2 and features.indices.shape == (2, 2)
    out = tmp_path / "cat.png"
    for steps in ("1", "4"):
        assert main(["generate", "--erase", "cat", "--prompt", "a cat in ink style",
                     "--out", str(out), "--model", "tiny-sdxl", "--num-inference-steps", steps,
                     "--guidance-scale", "0", "--guidance-half", "both", "--sae",
                     str(tmp_path / "sae"), "--hookpoint", hook, "--features",
                     str(tmp_path / "cat"), "--side-by-side", "--device", "cpu"]) == 0
        pair = np.asarray(Image.open(out))
        half = pair.shape[1] // 2
        assert not np.array_equal(pair[:, :half], pair[:, half:]), steps
