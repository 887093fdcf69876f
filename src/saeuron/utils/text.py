"""Reading the user's text files: UTF-8 (a byte-order mark allowed), or a one-line error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saeuron.utils.errors import ConfigError, FileFormatError


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of ``path``; a missing file or one that is not UTF-8 is a one-line error.

    ``what`` names the setting the file came from (``prompts``, ``labels``, ...), so the
    message says which input to fix.
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(what, f"{path} is a folder; expected a file")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(what, f"file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ConfigError(what, f"cannot read {path}: {err.strerror or err}") from None
    try:
        # utf-8-sig strips a byte-order mark, which Windows editors like to add.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise FileFormatError(
            path,
            f"not UTF-8 text (byte {err.start} is 0x{data[err.start]:02x}); save it as UTF-8",
        ) from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON content of a user's file: UTF-8 (BOM allowed) and valid, or a one-line error
    naming the file and where it breaks."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise FileFormatError(
            path, f"not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
        ) from None
