"""``saeuron ui``: the slider, a local web page to erase (or amplify) concepts interactively.

A prompt, one or more concepts each with a multiplier slider, and the image without erasure
beside the image with erasure; moving a slider regenerates only the erased image. It starts
on the bundled MiniCanvas model with no flags. The page is built on gradio, imported only
when the page is built, so ``import saeuron`` and the rest of the CLI never need it.

Layout: :mod:`.config` (``UiConfig``), :mod:`.studio` (the logic, testable without a
browser), :mod:`.page` (the gradio page).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from saeuron.erasure.preflight import check_erasure
from saeuron.models.layout import check_model_inputs
from saeuron.models.pipelines import check_model
from saeuron.models.sampling import SamplingConfig
from saeuron.ui.config import UiConfig, check_address
from saeuron.ui.page import build_app, launch
from saeuron.ui.studio import Studio
from saeuron.utils.devices import resolve_device

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'saeuron[ui]'"

__all__ = ["INSTALL_HINT", "UiConfig", "check_ui", "gradio_missing", "serve"]


def gradio_missing() -> bool:
    return importlib.util.find_spec("gradio") is None


def check_ui(cfg: UiConfig) -> None:
    """The device, the model and a named SAE, checked from files before anything loads."""
    resolve_device(cfg.device)
    check_model(cfg.model)
    sampling = SamplingConfig(num_inference_steps=cfg.steps, device=cfg.device)
    if cfg.sae is not None:
        check_erasure(cfg.model, sampling, cfg.sae, cfg.hookpoint)
    else:
        check_model_inputs(cfg.model, sampling, [cfg.hookpoint] if cfg.hookpoint else [])


def serve(cfg: UiConfig, block: bool = True) -> Any:
    """Load the model once, build the page and serve it on ``cfg.host:cfg.port``.

    Returns the gradio app (with ``block=False`` the server runs in a thread, for tests).
    The address is checked before the model loads: a port in use or a host that is not this
    machine's is a one-line error, not a traceback after a minute of loading.
    """
    check_address(cfg.host, cfg.port)
    check_ui(cfg)
    studio = Studio(cfg)
    studio.warm_up()
    app = build_app(studio)
    launch(app, cfg, block=block)
    return app
