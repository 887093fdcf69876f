from __future__ import annotations

import pytest
import torch

SD_HOOKPOINT = "unet.up_blocks.1.attentions.1"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_sd():
    from saeuron.tiny import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture(scope="session")
def tiny_sdxl():
    from saeuron.tiny import build_tiny_sdxl

    return build_tiny_sdxl()
