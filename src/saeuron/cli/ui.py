"""``saeuron ui``: serve the slider page (MiniCanvas on 127.0.0.1:7860 by default)."""

from __future__ import annotations

import argparse
from typing import Any

from saeuron.ui import INSTALL_HINT, gradio_missing
from saeuron.ui.config import UiConfig
from saeuron.utils.errors import UserError


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Serve a page with a prompt, concept sliders and the images without and "
        "with erasure side by side (default: the bundled MiniCanvas model on 127.0.0.1:7860).",
    )
    UiConfig.add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # Validation first: a bad flag is reported before gradio or any model is imported.
    cfg = UiConfig.from_args(args)
    if gradio_missing():
        raise UserError(f"gradio is not installed: {INSTALL_HINT}")
    # The server loads torch, the model and gradio: imported once the settings are checked.
    from saeuron.ui.server import serve  # noqa: PLC0415

    serve(cfg)
    return 0

