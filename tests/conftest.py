from __future__ import annotations

import os

# Tests never touch the network: hub lookups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch

SD_HOOKPOINT = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def forbid_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any pipeline load fails the test: every loader goes through these two names."""
    import saeuron.models.pipelines as pipelines

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pipeline was loaded")

    monkeypatch.setattr(pipelines, "build_tiny", boom)
    monkeypatch.setattr(pipelines.DiffusionPipeline, "from_pretrained", boom)


@pytest.fixture(scope="session")
def tiny_sd():
    from saeuron.models.tiny import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_sdxl():
    from saeuron.models.tiny import build_tiny_sdxl

    return build_tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_sd3():
    from saeuron.models.tiny import build_tiny_sd3

    return build_tiny_sd3()


@pytest.fixture(scope="session")
def tiny_flux():
    from saeuron.models.tiny import build_tiny_flux

    return build_tiny_flux()


@pytest.fixture(scope="session")
def tiny_pixart():
    from saeuron.models.tiny import build_tiny_pixart

    return build_tiny_pixart()
