"""One config tree: each key is declared by one config class; the others nest it (flattened,
so JSON, keyword arguments and flags stay as they are)."""

from __future__ import annotations

import collections
import dataclasses
import importlib
import pkgutil

import saeuron
from saeuron.utils.config import Config

DIFFERENT_MEANINGS: dict[str, str] = {
    "weights": "FID's Inception weights file; tune's weights of the UA/IRA/CRA scores",
    "template": "UA/IRA's zero-shot CLIP text ({concept}); the UnlearnCanvas prompt template "
    "({object}, {style})",
    "steps": "a number of denoising steps (demo, page); which steps a capture records "
    "('all', '0,10-20')",
    "k": "SaeConfig is a checkpoint's cfg.json, written and read field by field in the "
    "published layout; the commands that train SAEs share SaeSize",
    "expansion_factor": "as k",
}
"""Keys two configs declare on purpose, because they name different things there (or one of
them is a file format of its own)."""


def _all_configs() -> set[type[Config]]:
    for module in pkgutil.walk_packages(saeuron.__path__, "saeuron."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    found: set[type[Config]] = set()
    todo = [Config]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def declared_keys() -> dict[str, list[str]]:
    """Each key -> the config classes declaring it themselves (not through a nested part
    or a base class)."""
    where: dict[str, list[str]] = collections.defaultdict(list)
    for cls in _all_configs():
        # Tests declare configs of their own: the package's are the tree.
        if not dataclasses.is_dataclass(cls) or not cls.__module__.startswith("saeuron."):
            continue
        keys = {f.name for f in dataclasses.fields(cls)} - set(cls._flattened())
        for name in cls.__dict__.get("__annotations__", {}):
            if name in keys:
                where[name].append(f"{cls.__module__}.{cls.__qualname__}")
    return where


def test_no_key_is_declared_in_two_config_classes() -> None:
    repeated = {k: sorted(v) for k, v in declared_keys().items() if len(v) > 1}
    unexplained = {k: v for k, v in repeated.items() if k not in DIFFERENT_MEANINGS}
    assert unexplained == {}
    # An explanation for a key no longer repeated is stale.
    assert set(DIFFERENT_MEANINGS) <= set(repeated)
