"""The ``saeuron`` command: one CLI over the library's functions.

Each command lives beside the code it runs: a module listed in ``COMMAND_MODULES`` exposes
``register_cli(subparsers)`` adding its sub-command, whose handler receives the parsed
namespace and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .config import ConfigError

COMMAND_MODULES = (
    "saeuron.capture",
    "saeuron.train",
    "saeuron.concepts",
    "saeuron.technique",
    "saeuron.demo",
    "saeuron.minicanvas.cli",
    "saeuron.eval.cli",
    "saeuron.convert",
    "saeuron.perf.runner",
    "saeuron.ui",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saeuron",
        description="Erase concepts from diffusion models by editing SAE features.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        register = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except ConfigError as err:
        print(f"saeuron {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"saeuron {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
