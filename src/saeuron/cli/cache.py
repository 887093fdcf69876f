"""``saeuron capture``: store a hookpoint's activations while the stock pipeline samples.

Also answers to ``saeuron cache``, its old name (deprecated; see ``DEPRECATED_COMMANDS`` in
:mod:`saeuron.cli.main`).
"""

from __future__ import annotations

import argparse
from typing import Any

from saeuron.cli.main import DeprecatedFlag
from saeuron.training.capture_config import CacheConfig

# ``--steps`` is the number of denoising steps elsewhere (demo, ui); here the field picks
# which steps to record, so its flag says so. The old spelling stays for one release.
RECORD_STEPS = "--record-steps"


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Sample prompts with the stock pipeline and store the activations of one "
        "module as safetensors shards (resumable; runs under accelerate launch).",
    )
    CacheConfig.add_arguments(parser, flags={"steps": RECORD_STEPS})
    parser.add_argument("--steps", dest="steps", action=DeprecatedFlag, new=RECORD_STEPS)
    parser.set_defaults(handler=run)
    return parser


def run(args: argparse.Namespace) -> int:
    # The capture loads torch and the model: imported when the command runs, not for --help.
    from saeuron.training.capture import run_cache  # noqa: PLC0415

    manifest = run_cache(CacheConfig.from_args(args))
    if manifest:
        print(
            f"{manifest['n_tokens']} tokens of width {manifest['d_in']} in "
            f"{len(manifest['shards'])} shards at {args.out}"
        )
    return 0
