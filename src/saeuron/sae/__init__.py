"""The SAE layer: the model (:mod:`.model`), its architecture (:mod:`.config`) and the
checkpoint layouts it reads (:mod:`.formats`).

Names are imported on first use: :mod:`.config` needs no torch, and the training config that
nests it is read by ``saeuron train --help``, which must not load torch through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "SAE_FORMATS": "saeuron.sae.formats",
    "Checkpoint": "saeuron.sae.formats",
    "EncoderOutput": "saeuron.sae.model",
    "ForwardOutput": "saeuron.sae.model",
    "Sae": "saeuron.sae.model",
    "SaeConfig": "saeuron.sae.config",
    "detect_format": "saeuron.sae.formats",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from saeuron.sae.config import SaeConfig as SaeConfig
    from saeuron.sae.formats import SAE_FORMATS as SAE_FORMATS
    from saeuron.sae.formats import Checkpoint as Checkpoint
    from saeuron.sae.formats import detect_format as detect_format
    from saeuron.sae.model import EncoderOutput as EncoderOutput
    from saeuron.sae.model import ForwardOutput as ForwardOutput
    from saeuron.sae.model import Sae as Sae


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saeuron.sae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
