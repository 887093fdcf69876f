"""``saeuron eval``: measure an erasure against the field's metrics from one config.

Names are imported on first use, so that importing one light module of this package (a
config, for a command's ``--help``) does not load torch, diffusers and the metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EvalConfig": "saeuron.eval.config",
    "load_eval_config": "saeuron.eval.config",
    "parse_eval_config": "saeuron.eval.config",
    "plan": "saeuron.eval.runner",
    "run_eval": "saeuron.eval.runner",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from saeuron.eval.config import EvalConfig as EvalConfig
    from saeuron.eval.config import load_eval_config as load_eval_config
    from saeuron.eval.config import parse_eval_config as parse_eval_config
    from saeuron.eval.runner import plan as plan
    from saeuron.eval.runner import run_eval as run_eval


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'saeuron.eval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
