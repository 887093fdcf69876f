"""``saeuron convert stats|params``: the published pickles into safetensors + JSON."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saeuron.erasure.convert import convert_params, convert_stats
from saeuron.utils.errors import ConfigError
from saeuron.utils.io import check_output_file, check_output_folder


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="SAeUron and SAEmnesia publish per-class SAE statistics as pickles "
        "(cls_latents_dict_<hookpoint>.pkl) and parameters as class_params.pth. Unpickling "
        "runs code from the file, so they are read only with --trust-pickle; the output "
        "(safetensors + JSON) never needs that trust again.",
    )
    parser.add_argument("what", choices=("stats", "params"), help="what the file holds")
    parser.add_argument("input", help="cls_latents_dict_*.pkl or class_params.pth")
    parser.add_argument("--out", required=True, help="folder (stats) or .json file (params)")
    parser.add_argument("--hookpoint", help="recorded with the statistics")
    parser.add_argument(
        "--trust-pickle", action="store_true", help="I trust this file: unpickling runs its code"
    )
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    if not Path(args.input).is_file():
        raise ConfigError("input", f"{args.input} does not exist or is not a file")
    if args.what == "stats":
        check_output_folder(args.out, "out")
    else:
        check_output_file(args.out, "out")
    if args.what == "stats":
        written = convert_stats(args.input, args.out, args.trust_pickle, args.hookpoint)
        print(f"wrote {len(written)} concept statistics to {args.out}")
    else:
        print(f"wrote {convert_params(args.input, args.out, args.trust_pickle)}")
    return 0
