"""mkdocs hook: the command-line and config references, generated from the code at build time.

A page holds a marker and the hook replaces it with text made from the code itself, so the
reference cannot drift from what the program accepts:

- ``<!-- gen:cli -->``: ``saeuron --help`` and the ``--help`` of every command in
  ``saeuron.cli.main.COMMANDS``, with every action of a group, from the real parsers
  (``build_parser(command)``);
- ``<!-- gen:config package.module.Class -->``: a table of a config's keys (name, type,
  default, accepted values, help) from its dataclass fields, as JSON configs and the Python
  API take them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import re
import typing
from typing import Any

MARKER = re.compile(r"<!-- gen:(cli|config) ?([\w.]*) -->")
WIDTH = "96"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps at the terminal's width: fix it
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def _block(title: str, level: int, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"{'#' * level} `{title}`", "", "```text", _help(parser), "```", ""]
    for name, sub in _subparsers(parser).items():
        lines += _block(f"{title} {name}", min(level + 1, 4), sub)
    return lines


def cli_reference() -> str:
    from saeuron.cli.main import COMMANDS, build_parser

    top = build_parser()
    lines = ["## `saeuron`", "", "```text", _help(top), "```", ""]
    for command in COMMANDS:
        parser = _subparsers(build_parser(command))[command]
        lines += _block(f"saeuron {command}", 2, parser)
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    text = tp if isinstance(tp, str) else getattr(tp, "__name__", None) or str(tp)
    text = str(text).replace("typing.", "").replace("NoneType", "None")
    return text.replace(" | ", " or ")


def _default(f: dataclasses.Field, owner: Any = None) -> str:
    if owner is not None:
        return f"`{getattr(owner, f.name)!r}`"
    if f.default is not dataclasses.MISSING:
        return f"`{f.default!r}`"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return "(nested)" if dataclasses.is_dataclass(value) else f"`{value!r}`"
    return "required"


def _accepted(meta: dict[str, Any], bounds: dict[str, float] | None = None) -> str:
    from saeuron.utils.config_checks import describe_bounds

    parts = []
    if meta.get("choices"):
        parts.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
    shown = {**meta.get("bounds", {}), **(bounds or {})}
    if shown:
        parts.append(describe_bounds(shown))
    return "; ".join(parts) or "-"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def config_rows(
    cls: type,
    prefix: str = "",
    owner: Any = None,
    helps: dict[str, str] | None = None,
    limits: dict[str, dict[str, float]] | None = None,
    needed: frozenset[str] = frozenset(),
) -> list[str]:
    """One row per key; ``owner`` is the instance a nesting config holds (its defaults),
    ``helps`` and ``limits`` what the nesting config says of its keys."""
    hints = typing.get_type_hints(cls)
    helps = helps or {}
    limits = limits or {}
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meta = dict(f.metadata)
        nested = hints.get(f.name)
        if meta.get("flatten") and dataclasses.is_dataclass(nested):
            # Flattened: its keys sit at this level, with this level's defaults and words.
            inner = getattr(owner, f.name) if owner is not None else f.default_factory()  # type: ignore[misc]
            words = {**meta.get("describe", {}), **helps}
            tighter = {**meta.get("limits", {}), **limits}
            rows += config_rows(nested, prefix, inner, words, tighter,
                                needed | frozenset(k for k in meta.get("required", ())
                                                   if getattr(inner, k) is None))  # fmt: skip
            continue
        text = helps.get(f.name) or meta.get("help", "")
        rows.append(
            f"| `{prefix}{f.name}` | `{_cell(_type_name(hints.get(f.name, f.type)))}` | "
            f"{'required' if f.name in needed else _cell(_default(f, owner))} | "
            f"{_cell(_accepted(meta, limits.get(f.name)))} | "
            f"{_cell(text)} |"
        )
    return rows


def config_reference(path: str) -> str:
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    head = ["| key | type | default | accepted | what it does |", "|---|---|---|---|---|"]
    return "\n".join(head + config_rows(cls))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        kind, arg = match.group(1), match.group(2)
        return cli_reference() if kind == "cli" else config_reference(arg)

    return MARKER.sub(replace, markdown)
