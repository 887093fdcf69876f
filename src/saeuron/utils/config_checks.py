"""The checks every config runs, and the words of its errors: values in range, finite and
among their choices; unknown keys with a did-you-mean; old names of renamed keys."""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from saeuron.utils.errors import ConfigError

logger = logging.getLogger(__name__)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


PLAIN_KEY = re.compile(r"[A-Za-z_][\w-]*")


def key_name(key: object) -> str:
    """``key`` as an error names it: as it is when it looks like a key, else quoted. A key
    of a newline, a dot or nothing (or a YAML number) stays one unmistakable word."""
    text = str(key)
    return text if isinstance(key, str) and PLAIN_KEY.fullmatch(text) else repr(key)


def reject_unknown(
    where: str,
    keys: Iterable[str],
    allowed: Iterable[str],
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Refuse a key not in ``allowed``. A misspelt old name (``aliases``: old -> new) is
    pointed to the new name: the old one is on its way out."""
    allowed = list(allowed)
    aliases = dict(aliases or {})
    for key in keys:
        if key not in allowed and key not in aliases:
            name = key_name(key)
            close = difflib.get_close_matches(str(key), [*allowed, *aliases], n=1, cutoff=0.6)
            hint = f" (did you mean {aliases.get(close[0], close[0])!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{name}" if where else name,
                f"unknown key{hint}; allowed: {', '.join(sorted(allowed))}",
            )


def rename_aliases(
    where: str, data: Mapping[str, Any], aliases: Mapping[str, str]
) -> dict[str, Any]:
    """``data`` with each old key (``aliases``: old -> new) under its new name.

    Each old key logs a deprecation message; an old and a new key for the same field is an
    error naming the field.
    """
    out = dict(data)
    for old, new in aliases.items():
        if old not in out:
            continue
        name = f"{where}.{new}" if where else new
        if new in out:
            raise ConfigError(
                name, f"given twice, as {new!r} and as its old name {old!r}; keep {new!r}"
            )
        logger.warning("%r is deprecated; use %r instead", f"{where}.{old}" if where else old,
                       name)  # fmt: skip
        out[new] = out.pop(old)
    return out


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        hint = did_you_mean(value, [str(c) for c in choices]) if isinstance(value, str) else ""
        raise ConfigError(
            name, f"got {value!r}{hint}; allowed: {', '.join(repr(c) for c in choices)}"
        )


def check_finite(name: str, value: Any) -> None:
    """Reject NaN and infinities: they turn into black images, not errors, downstream."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"got {value!r}; must be a finite number")


def check_range(
    name: str,
    value: float,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> None:
    check_finite(name, value)
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


def describe_bounds(bounds: Mapping[str, float]) -> str:
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{signs[k]} {_number(v)}" for k, v in bounds.items())


def _number(value: float) -> str:
    """A bound as the user must type it: whole numbers exactly (``%g`` would turn a seed's
    bound 2**63 - 1 into 9.22337e+18, which is not the limit), fractions compactly."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return f"{value:g}"
