"""``saeuron cache``: store a hookpoint's activations while the stock pipeline samples."""

from __future__ import annotations

import argparse
from typing import Any

from saeuron.training.capture import CacheConfig, run_cache


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Sample prompts with the stock pipeline and store the activations of one "
        "module as safetensors shards (resumable; runs under accelerate launch).",
    )
    CacheConfig.add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    manifest = run_cache(CacheConfig.from_args(args))
    if manifest:
        print(
            f"{manifest['n_tokens']} tokens of width {manifest['d_in']} in "
            f"{len(manifest['shards'])} shards at {args.out}"
        )
    return 0
