"""The walk of one ``saeuron.SAeUron(erase_concept="moon", model="minicanvas")`` call.

This measures how far one construction wanders through the package: how many of its
source files run, how often the model is looked up by name again (``find_bundle``) and how
often the code enters ``models/bundles.py`` from another file. This script counts those with
a profile hook (``sys.setprofile``) and prints them, so a refactor can be compared with the
numbers before it::

    python benchmarks/house/walk.py          # a second construction: the call's own walk
    python benchmarks/house/walk.py --cold   # the first one, module imports included

By default one untraced construction runs first, so that the traced one is the call itself and
not the lazy imports it triggers the first time (``--cold`` counts those too).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from types import FrameType
from typing import Any

# Never ask the network: the bundled model is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import saeuron  # noqa: E402  (after the environment it reads)

PACKAGE = Path(saeuron.__file__).resolve().parent
# Where bundles are looked up by name: the module and the one it re-exports from.
BUNDLES = {PACKAGE / "models" / "bundles.py", PACKAGE / "models" / "bundle_lookup.py"}
LOOKUP = "find_bundle"


class Walk:
    """What a profile hook saw: calls per package file, lookups, entries into bundles.py."""

    def __init__(self) -> None:
        self.calls: Counter[Path] = Counter()
        self.lookups = 0
        self.bundle_entries = 0
        self._paths: dict[str, Path | None] = {}

    def _package_path(self, filename: str) -> Path | None:
        # Resolved once per file name: the hook runs for every call of the construction.
        if filename not in self._paths:
            path = Path(filename).resolve()
            self._paths[filename] = path if path.is_relative_to(PACKAGE) else None
        return self._paths[filename]

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        path = self._package_path(frame.f_code.co_filename)
        if path is None:
            return
        self.calls[path] += 1
        if frame.f_code.co_name == LOOKUP:
            self.lookups += 1
        if path in BUNDLES:
            caller = frame.f_back
            if caller is None or self._package_path(caller.f_code.co_filename) not in BUNDLES:
                self.bundle_entries += 1


def trace_construction(**config: Any) -> Walk:
    walk = Walk()
    sys.setprofile(walk)
    try:
        saeuron.SAeUron(**config)
    finally:
        sys.setprofile(None)
    return walk


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="trace the first construction")
    parser.add_argument("--files", action="store_true", help="list the files and their calls")
    args = parser.parse_args(argv)
    config = {"erase_concept": "moon", "model": "minicanvas"}
    if not args.cold:
        saeuron.SAeUron(**config)
    walk = trace_construction(**config)
    print(f"construction: SAeUron(erase_concept='moon', model='minicanvas') "
          f"({'cold' if args.cold else 'warm'})")  # fmt: skip
    print(f"saeuron files visited: {len(walk.calls)}")
    print(f"find_bundle calls:     {walk.lookups}")
    print(f"bundle module entries: {walk.bundle_entries}")
    print(f"saeuron calls:         {sum(walk.calls.values())}")
    if args.files:
        for path, n in sorted(walk.calls.items(), key=lambda item: (-item[1], str(item[0]))):
            print(f"  {n:6d}  {path.relative_to(PACKAGE)}")


if __name__ == "__main__":
    main()
