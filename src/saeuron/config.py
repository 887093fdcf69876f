"""Typed configs shared by the Python API, JSON files and the command line.

Every config is a dataclass deriving from :class:`Config`. Fields carry their help text in
``metadata["help"]``; validation lives in ``__post_init__`` and raises :class:`ConfigError`
naming the field and what it accepts, so bad input fails before any heavy work starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and the allowed values."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def reject_unknown(where: str, keys: Iterable[str], allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    for key in keys:
        if key not in allowed:
            raise ConfigError(
                f"{where}.{key}" if where else key,
                f"unknown key{did_you_mean(key, allowed)}; allowed: {', '.join(sorted(allowed))}",
            )


def field(default: Any = dataclasses.MISSING, *, help: str, **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with its help text, used by ``--help`` and the docs."""
    metadata = {"help": help, **kwargs.pop("metadata", {})}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(name, f"got {value!r}; allowed: {', '.join(repr(c) for c in choices)}")


def check_range(
    name: str,
    value: float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    bounds = []
    if gt is not None and not value > gt:
        bounds.append(f"> {gt}")
    if ge is not None and not value >= ge:
        bounds.append(f">= {ge}")
    if lt is not None and not value < lt:
        bounds.append(f"< {lt}")
    if le is not None and not value <= le:
        bounds.append(f"<= {le}")
    if bounds:
        raise ConfigError(name, f"got {value!r}; must be {' and '.join(bounds)}")


def check_device(name: str, value: str | None) -> None:
    """Reject a device string torch cannot parse (``None`` means auto-detect)."""
    if value is None:
        return
    import torch

    try:
        torch.device(value)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(
            name, f"got {value!r}; expected e.g. 'cpu', 'cuda', 'cuda:1', 'mps' or null (auto)"
        ) from err


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
        return tp, type(None) in typing.get_args(tp)
    return tp, False


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert JSON/CLI values to the field's type; reject what cannot be converted."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(name, "must not be null")
    origin = typing.get_origin(inner)
    try:
        if inner is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise TypeError
        if inner is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if inner is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if inner is str:
            if not isinstance(value, (str, Path)):
                raise TypeError
            return str(value)
        if origin in (list, tuple, Sequence) or inner in (list, tuple):
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            (item_tp, *_) = typing.get_args(inner) or (Any,)
            items = [_coerce(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value)]
            return tuple(items) if origin is tuple or inner is tuple else items
        if origin in (dict, Mapping) or inner is dict:
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError) as err:
        raise ConfigError(name, f"got {value!r}; expected {_type_name(inner)}") from err
    if typing.get_origin(inner) in (Union, types.UnionType):
        # Union of scalars (e.g. float | dict): try each in declaration order.
        for option in typing.get_args(inner):
            if option is type(None):
                continue
            try:
                return _coerce(name, option, value)
            except ConfigError:
                continue
        raise ConfigError(name, f"got {value!r}; expected {_type_name(inner)}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


@dataclasses.dataclass
class Config:
    """Base of every config: dict/JSON round trip and argparse generation."""

    @classmethod
    def _hints(cls) -> dict[str, Any]:
        return typing.get_type_hints(cls)

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], where: str = "") -> C:
        if not isinstance(data, Mapping):
            raise ConfigError(
                where or cls.__name__, f"expected an object, got {type(data).__name__}"
            )
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        reject_unknown(where, data.keys(), names)
        hints = cls._hints()
        kwargs = {k: _coerce(f"{where}.{k}" if where else k, hints[k], v) for k, v in data.items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: Iterable[str] = ()) -> None:
        """Add one ``--option`` per field; values stay strings and are coerced by from_dict."""
        skip = set(skip)
        hints = cls._hints()
        for f in dataclasses.fields(cls):
            if not f.init or f.name in skip:
                continue
            flag = "--" + f.name.replace("_", "-")
            inner, _ = _unwrap_optional(hints[f.name])
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            help_text = f.metadata.get("help", "")
            if inner is bool:
                parser.add_argument(
                    flag,
                    dest=f.name,
                    action=argparse.BooleanOptionalAction,
                    default=argparse.SUPPRESS,
                    help=f"{help_text} (default: {default})",
                )
            else:
                parser.add_argument(
                    flag,
                    dest=f.name,
                    default=argparse.SUPPRESS,
                    metavar=f.name.upper(),
                    help=f"{help_text} (default: {default})",
                )

    @classmethod
    def from_args(cls: type[C], ns: argparse.Namespace, **extra: Any) -> C:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        data = {k: v for k, v in vars(ns).items() if k in names}
        data.update(extra)
        return cls.from_dict(data)
