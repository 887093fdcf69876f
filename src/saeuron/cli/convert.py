"""``saeuron convert stats | params``: the published pickles into safetensors + JSON.

Each kind of file is a sub-command with its own flags (``--hookpoint`` only means something
for statistics; ``--out`` is a folder for one and a file for the other). The library is
imported by the handlers only, so that ``--help`` does not load torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saeuron.cli.main import DeprecatedFlag, warn_deprecated
from saeuron.utils.errors import ConfigError

KINDS = ("stats", "params")
# The flags of the old single parser that take a value: to find its positional choice.
_VALUE_FLAGS = ("--out", "--hookpoint")
TRUST_HELP = "I trust this file: unpickling runs its code"


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="SAeUron and SAEmnesia publish per-class SAE statistics as pickles "
        "(cls_latents_dict_<hookpoint>.pkl) and parameters as class_params.pth. Unpickling "
        "runs code from the file, so they are read only with --trust-pickle; the output "
        "(safetensors + JSON) never needs that trust again.",
    )
    kinds = parser.add_subparsers(dest="convert_command", metavar="KIND")
    kinds.required = True
    stats = kinds.add_parser(
        "stats",
        help="per-class SAE statistics (cls_latents_dict_<hookpoint>.pkl) -> a folder",
        description="Write one safetensors + JSON pair per concept of the pickled statistics.",
    )
    stats.add_argument("input", metavar="INPUT", help="cls_latents_dict_<hookpoint>.pkl")
    stats.add_argument("--out", required=True, help="output folder")
    stats.add_argument("--hookpoint", help="recorded with the statistics")
    stats.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    stats.set_defaults(handler=run_stats)
    params = kinds.add_parser(
        "params",
        help="per-class erasure parameters (class_params.pth) -> a .json file",
        description="Write the pickled per-class parameters as one JSON file.",
    )
    params.add_argument("input", metavar="INPUT", help="class_params.pth")
    params.add_argument("--out", required=True, help="output .json file")
    params.add_argument("--trust-pickle", action="store_true", help=TRUST_HELP)
    # The old single parser took --hookpoint for both kinds and params ignored it.
    params.add_argument("--hookpoint", action=DeprecatedFlag, new=None)
    params.set_defaults(handler=run_params)
    return parser


def modern_argv(args: list[str]) -> list[str]:
    """The old form, flags before the kind (``convert --out X stats IN``) -> the kind first.

    With the kind first, the old positional form and the sub-command are the same words.
    """
    at = 0
    while at < len(args):
        arg = args[at]
        if arg in _VALUE_FLAGS:
            at += 2
            continue
        if arg.startswith("-"):
            at += 1
            continue
        if arg in KINDS and at > 0:
            warn_deprecated(
                f"'saeuron convert {' '.join(args[:at])} {arg}' (flags before the kind)",
                f"'saeuron convert {arg} ...'",
            )
            return [arg, *args[:at], *args[at + 1 :]]
        return args
    return args


def _check_input(path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError("input", f"{path} does not exist or is not a file")


def run_stats(args: argparse.Namespace) -> int:
    # torch comes with these: here, not at the top, so that --help stays fast.
    from saeuron.erasure.convert import convert_stats
    from saeuron.utils.io import check_output_folder

    _check_input(args.input)
    check_output_folder(args.out, "out")
    written = convert_stats(args.input, args.out, args.trust_pickle, args.hookpoint)
    print(f"wrote {len(written)} concept statistics to {args.out}")
    return 0


def run_params(args: argparse.Namespace) -> int:
    from saeuron.erasure.convert import convert_params
    from saeuron.utils.io import check_output_file

    _check_input(args.input)
    check_output_file(args.out, "out")
    print(f"wrote {convert_params(args.input, args.out, args.trust_pickle)}")
    return 0
