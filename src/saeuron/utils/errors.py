"""Errors a user can fix: the command line prints them as one line and exits with code 2.

Anything else that escapes is a bug and keeps its traceback (exit code 1).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a missing resource, explained in one line that says what to do."""


class ConfigError(UserError, ValueError):
    """A config value is wrong; the message names the field and the allowed values."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class MachineMismatchError(ConfigError):
    """The config is valid, but this machine lacks what it asks for (a CUDA device it does not
    have): a portable file checked elsewhere (``--check`` warns), refused when it runs here."""


class FileFormatError(UserError, ValueError):
    """A file exists but cannot be read as what it should be; the message names it."""

    def __init__(self, path: object, message: str):
        self.path = str(path)
        self.reason = message
        super().__init__(f"{path}: {message}")


class ModelUnavailableError(UserError, OSError):
    """A model or file on the Hugging Face hub cannot be had (offline, not cached, no access).

    ``piece`` says which, in a few words (``model 'owner/name' (not cached ...)``), so that an
    error naming every missing piece at once can be built from several of these."""

    def __init__(self, message: str, piece: str | None = None):
        self.piece = piece
        super().__init__(message)


class DegenerateOutputError(UserError, RuntimeError):
    """Sampling produced non-finite values: the run stops rather than score a black image."""


class DiskFullError(UserError, OSError):
    """A write ran out of space (or quota); the file it replaces, if any, is intact."""

    def __init__(self, path: object):
        self.path = str(path)
        super().__init__(
            f"{path}: no space left on device; the previous file, if any, is intact and no "
            "temporary file is left. Free some space and run the command again"
        )
