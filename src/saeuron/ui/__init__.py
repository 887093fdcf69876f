"""``saeuron ui``: the slider, a local web page to erase (or amplify) concepts interactively.

A prompt, one or more concepts each with a multiplier slider, and the image without erasure
beside the image with erasure; moving a slider regenerates only the erased image. It starts
on the bundled MiniCanvas model with no flags. The page is built on gradio, imported only
when the page is built, so ``import saeuron`` and the rest of the CLI never need it.

Layout: :mod:`.config` (``UiConfig``), :mod:`.studio` (the logic, testable without a
browser), :mod:`.page` (the gradio page).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import Any

from .config import UiConfig

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'saeuron[ui]'"

__all__ = ["UiConfig", "serve", "register_cli"]


def gradio_missing() -> bool:
    return importlib.util.find_spec("gradio") is None


def serve(cfg: UiConfig, block: bool = True) -> Any:
    """Load the model once, build the page and serve it on ``cfg.host:cfg.port``.

    Returns the gradio app (with ``block=False`` the server runs in a thread, for tests).
    """
    from .page import build_app, launch
    from .studio import Studio

    studio = Studio(cfg)
    studio.warm_up()
    app = build_app(studio)
    launch(app, cfg, block=block)
    return app


def _handle(args: argparse.Namespace) -> int:
    # Validation first: a bad flag is reported before gradio or any model is imported.
    cfg = UiConfig.from_args(args)
    if gradio_missing():
        print(f"saeuron ui: error: gradio is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 2
    serve(cfg)
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ui",
        help="the slider: a local page to erase or amplify concepts interactively",
        description="Serve a page with a prompt, concept sliders and the images without and "
        "with erasure side by side (default: the bundled MiniCanvas model on 127.0.0.1:7860).",
    )
    UiConfig.add_arguments(parser)
    parser.set_defaults(handler=_handle)
