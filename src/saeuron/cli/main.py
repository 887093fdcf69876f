"""The ``saeuron`` command: one CLI over the library's functions, one module per command.

``saeuron --help`` lists the commands without importing any of them (so without torch);
only the command asked for is imported and given its full parser.

Every user error (bad input, a missing or malformed file, a model the hub cannot give) is
printed as one line naming what to fix, with exit code 2. Anything else is a bug: its
traceback is shown and the exit code is 1. ``--debug`` (or ``SAEURON_DEBUG=1``) shows the
traceback of user errors too.

A renamed command or flag keeps its old spelling for one release: it works as the new one
and prints one ``saeuron: warning: ...`` line (a :class:`CliDeprecationWarning`). Old command
names are in ``DEPRECATED_COMMANDS``; a command module rewrites its own old forms, with
:class:`DeprecatedFlag` or a ``modern_argv`` function.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any, NoReturn

from saeuron import __version__
from saeuron.utils.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("saeuron.cli.demo", "erase an object and a style from the bundled model"),
    "generate": ("saeuron.cli.generate", "sample images with concepts erased"),
    "concept": ("saeuron.cli.concept", "find the SAE latents of a concept"),
    "capture": ("saeuron.cli.cache", "store a hookpoint's activations while sampling prompts"),
    "train": ("saeuron.cli.train", "train an SAE on captured activations"),
    "tune": ("saeuron.cli.tune", "search an erasure recipe on validation prompts (Optuna)"),
    "eval": ("saeuron.cli.eval", "measure an erasure from one JSON or YAML config"),
    "ui": ("saeuron.cli.ui", "the slider: erase or amplify concepts live in a web page"),
    "minicanvas": ("saeuron.cli.minicanvas", "the bundled MiniCanvas model and its benchmark"),
    "bench": ("saeuron.cli.bench", "measure what erasing, training and capture cost"),
    "hub": ("saeuron.cli.hub", "pull a bundle from the hub; publish bundles, SAEs, features"),
    "convert": (
        "saeuron.cli.convert",
        "published pickled statistics or parameters -> safetensors + JSON (needs trust)",
    ),
    "env": ("saeuron.cli.env", "versions, devices, caches and hub settings, for a bug report"),
}
DEPRECATED_COMMANDS: dict[str, str] = {
    # Old name -> new name. Kept for one release after 0.2.0; not listed by --help. "cache"
    # read as the hub's or the statistics' cache; the command captures activations.
    "cache": "capture",
}
DEBUG_ENV = "SAEURON_DEBUG"


class CliDeprecationWarning(FutureWarning):
    """An old spelling of a command or flag: it still works, for one more release.

    A FutureWarning (the category Python shows to end users) of our own, so that the CLI can
    show it while it hides the third parties' FutureWarnings, and a test or a caller of
    :func:`main` can single it out (``pytest.warns``, ``warnings.catch_warnings``).
    """


def warn_deprecated(old: str, new: str | None) -> None:
    """Say once that ``old`` is going and ``new`` replaces it (``None``: nothing does, it has
    no effect); the run goes on as ``new``."""
    instead = f"use {new}" if new else "leave it out (it has no effect)"
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release; {instead}",
        CliDeprecationWarning,
        stacklevel=2,
    )


class DeprecatedFlag(argparse.Action):
    """A hidden old spelling of a flag: stores like the new one and warns.

    ``parser.add_argument("--steps", dest="steps", action=DeprecatedFlag, new="--record-steps")``;
    ``new=None`` for a flag that never had an effect there.
    """

    def __init__(
        self, option_strings: Sequence[str], dest: str, new: str | None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("help", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        new = f"'{parser.prog} {self.new}'" if self.new else None
        warn_deprecated(f"'{parser.prog} {option_string}'", new)
        setattr(namespace, self.dest, values)


_python_formatwarning = warnings.formatwarning


def _format_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    # A deprecation of ours is one line addressed to the user, not a source location.
    if issubclass(category, CliDeprecationWarning):
        return f"saeuron: warning: {message}\n"
    return _python_formatwarning(message, category, filename, lineno, line)


def show_deprecations() -> None:
    """Our deprecations are shown (once each) even where third-party FutureWarnings are not.

    ``filterwarnings`` puts the newest filter first, so this runs after any other filter the
    CLI sets.
    """
    warnings.formatwarning = _format_warning
    warnings.filterwarnings("default", category=CliDeprecationWarning)


def package_version() -> str:
    """``saeuron.__version__``: the one place the version is written (the distribution's
    metadata is made from it, and an editable install's metadata can lag behind it)."""
    return __version__


class Parser(argparse.ArgumentParser):
    """argparse with the CLI's error style, for the top level and every sub-command.

    A bad flag is a user error like any other: one line naming it (and where the options
    are listed), exit code 2, not the usage block. Values such as ``-inf`` or ``-1e30`` read
    as values, not as unknown flags, so that they reach the checks that name them.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf(inity)?|nan)$", re.I)


def build_parser(
    command: str | None = None, argv: Sequence[str] | None = None
) -> argparse.ArgumentParser:
    """The parser; only ``command`` (if any) gets its arguments, so only it is imported.

    ``argv`` (the whole command line) lets a group build only the action it names: a
    command module whose ``add_parser`` takes ``argv`` gets the words after the command.
    Without it every action is built, as a caller of the parser itself expects.
    """
    parser = Parser(
        prog="saeuron",
        description="Erase concepts from text-to-image diffusion models at inference time by "
        "editing sparse-autoencoder features (SAeUron, SAEmnesia).",
    )
    parser.add_argument("--version", action="version", version=f"saeuron {package_version()}")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="store_true", help="debug logging, all warnings")
    noise.add_argument("-q", "--quiet", action="store_true", help="errors only")
    parser.add_argument(
        "--debug", action="store_true", help=f"tracebacks for user errors too (or {DEBUG_ENV}=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            _add_command(sub, name, module, help_text, argv)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    if command in DEPRECATED_COMMANDS:
        # Under its old name, so that its messages name what the user typed; only when
        # asked for, so that --help lists the new name alone.
        new = DEPRECATED_COMMANDS[command]
        help_text = f"deprecated name of 'saeuron {new}'"
        _add_command(sub, command, COMMANDS[new][0], help_text, argv)
    return parser


def _add_command(
    sub: Any, name: str, module: str, help_text: str, argv: Sequence[str] | None
) -> None:
    add_parser = importlib.import_module(module).add_parser
    if argv is not None and "argv" in inspect.signature(add_parser).parameters:
        words = list(argv)
        rest = words[words.index(name) + 1 :] if name in words else []
        add_parser(sub, name, help_text, argv=rest)
    else:
        add_parser(sub, name, help_text)


def _command_in(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS or arg in DEPRECATED_COMMANDS), None)


def modern_argv(argv: list[str], command: str | None) -> list[str]:
    """``argv`` with the command's old forms rewritten to the current ones (each warned of).

    A command module may define ``modern_argv(args) -> args`` for the arguments after its
    name (``concept build X`` -> ``concept X``, say).
    """
    if command is None:
        return argv
    if command in DEPRECATED_COMMANDS:
        warn_deprecated(f"'saeuron {command}'", f"'saeuron {DEPRECATED_COMMANDS[command]}'")
    module = COMMANDS[DEPRECATED_COMMANDS.get(command, command)][0]
    rewrite = getattr(importlib.import_module(module), "modern_argv", None)
    if rewrite is None:
        return argv
    at = argv.index(command) + 1
    return [*argv[:at], *rewrite(argv[at:])]


def configure_logging(verbose: bool, quiet: bool) -> None:
    """Our logger only: third-party libraries keep their own levels (and stay quiet)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("saeuron")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    if verbose:
        logging.captureWarnings(False)
        warnings.simplefilter("default")
    else:
        quiet_third_parties()


def quiet_third_parties() -> None:
    """Normal runs show no third-party notices; ``-v`` shows them all."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings(
        "ignore", category=UserWarning, module=r"(diffusers|transformers|torch|huggingface_hub)"
    )
    for name in ("diffusers", "transformers", "huggingface_hub", "httpx", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_environment()


def quiet_environment() -> None:
    """The libraries' own verbosity settings, read when they are imported."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not {"-v", "--verbose"} & set(argv):
        # Before the command's module imports transformers, which prints notices (a missing
        # optional torchvision, ...) on import: an error must stay the only line printed.
        quiet_environment()
    show_deprecations()
    command = _command_in(argv)
    argv = modern_argv(argv, command)
    parser = build_parser(command, argv)
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    show_deprecations()
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.handler(args) or 0)
    except (UserError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as err:
        if debug:
            raise
        message = str(err).replace("\n", " ")
        print(f"saeuron {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saeuron {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_process_group()


def leave_process_group() -> None:
    """A launched run's process leaves its process group before it exits. Left to the
    interpreter's exit, the group's threads can abort a process that has done all its work
    ("terminate called without an active exception", exit -6). torch.distributed is only
    looked at if the command imported it: the CLI itself never imports torch."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
