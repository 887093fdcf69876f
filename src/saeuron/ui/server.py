"""Serving the slider page: check the settings against the files, load the model, build the
page and listen (:func:`serve`). Loads torch and the model; :mod:`saeuron.ui` re-exports it."""

from __future__ import annotations

from typing import Any

from saeuron.erasure.preflight import check_erasure
from saeuron.models.layout import check_model_inputs
from saeuron.models.pipelines import check_model
from saeuron.models.sampling import SamplingConfig
from saeuron.ui.config import UiConfig, check_address
from saeuron.ui.page import build_app, launch
from saeuron.ui.studio import Studio
from saeuron.utils.devices import resolve_device


def check_ui(cfg: UiConfig) -> None:
    """The device, the model and a named SAE, checked from files before anything loads."""
    resolve_device(cfg.device)
    check_model(cfg.resolved_model)
    sampling = SamplingConfig(num_inference_steps=cfg.steps, device=cfg.device)
    if cfg.sae is not None:
        check_erasure(cfg.resolved_model, sampling, cfg.sae, cfg.hookpoint)
    else:
        check_model_inputs(cfg.resolved_model, sampling, [cfg.hookpoint] if cfg.hookpoint else [])


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
