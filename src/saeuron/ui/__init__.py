"""``saeuron ui``: the slider, a local web page to erase (or amplify) concepts interactively.

A prompt, one or more concepts each with a multiplier slider, and the image without erasure
beside the image with erasure; moving a slider regenerates only the erased image. It starts
on the bundled MiniCanvas model with no flags. The page is built on gradio, imported only
when the page is built, so ``import saeuron`` and the rest of the CLI never need it.

Layout: :mod:`.config` (``UiConfig``), :mod:`.studio` (the logic, testable without a
browser), :mod:`.page` (the gradio page), :mod:`.server` (``serve``). ``check_ui`` and
``serve`` are imported on first use: ``saeuron ui --help`` reads ``UiConfig`` from here
without loading torch or the model.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from saeuron.ui.config import UiConfig

if TYPE_CHECKING:
    from saeuron.ui.server import check_ui as check_ui
    from saeuron.ui.server import serve as serve

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'saeuron[ui]'"

__all__ = ["INSTALL_HINT", "UiConfig", "check_ui", "gradio_missing", "serve"]
_SERVER = ("check_ui", "serve")
"""Names of :mod:`.server`, which loads torch and the model."""


def gradio_missing() -> bool:
    return importlib.util.find_spec("gradio") is None


def __getattr__(name: str) -> Any:
    if name not in _SERVER:
        raise AttributeError(f"module 'saeuron.ui' has no attribute {name!r}")
    value = getattr(importlib.import_module("saeuron.ui.server"), name)
    globals()[name] = value
    return value
