"""Plugins named ``package.module:Class``: imported only when a user names them on the
command line or in Python. A file (a config, a recipe) that names a module is code to run,
and is refused unless the user says they trust it (``--trust-code``)."""

from __future__ import annotations

import importlib
from typing import Any

from saeuron.utils.errors import ConfigError


def is_plugin(name: str) -> bool:
    """Whether ``name`` names code (``module:Class``) rather than a registered name."""
    return ":" in name


def load_plugin(spec: str, setting: str) -> Any:
    """``package.module:Class`` -> the class, or a one-line error naming ``setting``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(setting, f"got {spec!r}; expected a registered name or module:Class")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(setting, f"cannot import {module_name!r}: {err}") from None
    found = getattr(module, attr, None)
    if found is None:
        raise ConfigError(setting, f"{module_name!r} has no {attr!r}")
    return found


def refuse_untrusted(spec: str, setting: str, source: str) -> None:
    """A ``module:Class`` read from ``source`` (a file) runs code: refused unless trusted."""
    raise ConfigError(
        setting,
        f"{spec!r} in {source} names code to import and run; a file never runs code unless you "
        "pass --trust-code (or name the plugin on the command line)",
    )
