"""Offline with nothing cached, the preflight names every missing piece in one error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.faults import HOOK, bundle_folder

from saeuron.erasure.preflight import check_erasure
from saeuron.models.resolve import resolve_model
from saeuron.models.sampling import SamplingConfig
from saeuron.utils.errors import ConfigError, ModelUnavailableError


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def test_model_sae_and_features_are_all_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError) as caught:
        check_erasure(
            resolve_model("nobody/uncached-model"), SamplingConfig(), "nobody/uncached-sae", HOOK,
            tmp_path / "no" / "zebra",
        )  # fmt: skip
    message = str(caught.value)
    assert message.startswith("3 pieces are missing: model 'nobody/uncached-model'")
    assert "SAE 'nobody/uncached-sae'" in message
    assert f"features '{tmp_path / 'no' / 'zebra'}'" in message
    assert "HF_HUB_OFFLINE" in message and "\n" not in message


def test_a_present_sae_is_not_named_and_one_missing_piece_keeps_its_own_error(
    tmp_path: Path,
) -> None:
    sae = str(bundle_folder() / "saes")
    uncached = resolve_model("nobody/uncached-model")
    with pytest.raises(ModelUnavailableError, match="^2 pieces are missing: model") as caught:
        check_erasure(uncached, SamplingConfig(), sae, HOOK, tmp_path / "zebra")
    assert "SAE" not in str(caught.value)
    with pytest.raises(ModelUnavailableError, match="^model 'nobody/uncached-model' cannot be"):
        check_erasure(uncached, SamplingConfig(), sae, HOOK)
    with pytest.raises(ConfigError, match="^features: .*zebra.safetensors does not exist"):
        check_erasure(resolve_model("minicanvas"), SamplingConfig(), sae, HOOK, tmp_path / "zebra")


def test_generate_offline_with_an_empty_cache_names_model_and_sae(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "SAEURON_CACHE": str(tmp_path / "cache"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "saeuron.cli.main", "generate", "--model",
         "CompVis/stable-diffusion-v1-4", "--erase", "zebra", "--prompt", "x",
         "--out", str(tmp_path / "x.png")],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert "2 pieces are missing: model 'CompVis/stable-diffusion-v1-4'" in lines[0]
    assert "SAE 'bcywinski/SAeUron_coco'" in lines[0]
    assert not (tmp_path / "x.png").exists()
