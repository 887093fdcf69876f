from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# Tests never touch the network: hub lookups fail at once instead of timing out.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Nor the user's cache: a changed copy of a bundle there shadows the shipped one by name, so
# a session gets an empty cache of its own, as on a fresh machine.
_CACHE = tempfile.mkdtemp(prefix="saeuron-test-cache-")
os.environ["SAEURON_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


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


@pytest.fixture
def colour(monkeypatch):
    """The eval runner with a stand-in technique (coloured noise) and CLIP: no model at all."""
    from helpers.evaluation import ColourClip, ColourTechnique

    import saeuron.eval.metrics.ua_ira as ua_ira_module
    import saeuron.eval.runner as runner

    made = []

    def build(name, cfg):
        made.append(ColourTechnique(getattr(build, "fail_after", None)))
        return made[-1]

    ColourTechnique.calls = 0
    monkeypatch.setattr(runner, "build_technique", build)
    # The stand-in needs no model, so nothing of the configured one is checked either.
    monkeypatch.setattr(runner, "check_technique_config", lambda cfg: None)
    import saeuron.eval.clip as clip_module

    real = clip_module.load_clip

    def fake(model, device=None):
        # The default CLIP (not on this machine) is stood in for; any other goes through.
        return ColourClip() if model == clip_module.DEFAULT_CLIP else real(model, device)

    for module in (ua_ira_module, clip_module):
        monkeypatch.setattr(module, "load_clip", fake)
    return build
