"""``saeuron concept CONCEPT ...``: select the SAE latents of a concept (statistics are cached).

The command was a group with one action, ``concept build``; that spelling still works for
one release (with a deprecation warning) and means the same.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saeuron.cli.main import warn_deprecated
from saeuron.erasure.concepts.build_config import ConceptBuildConfig

OLD_ACTION = "build"


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Find the SAE latents that encode CONCEPT: its statistics against other "
        "concepts (contrastive), or the top latents of its own images (shortcut); optionally "
        "save them with --out.",
    )
    # The old action's name, hidden: an optional positional before CONCEPT takes 'build'
    # only when two positionals are given, so 'concept build moon' is the old form and
    # 'concept moon' (or a concept named 'build' alone) the new one. In the parser rather
    # than an argv rewrite, so that callers of the parser itself keep working.
    parser.add_argument(
        "old_action", nargs="?", choices=(OLD_ACTION,), default=None, help=argparse.SUPPRESS
    )
    ConceptBuildConfig.add_arguments(parser)
    parser.set_defaults(handler=run_build)
    return parser


def run_build(args: argparse.Namespace) -> int:
    # Building loads torch and the model: imported when the command runs, not for --help.
    from saeuron.erasure.concepts.build import build_concept, summarize  # noqa: PLC0415

    if args.old_action:
        warn_deprecated("'saeuron concept build'", "'saeuron concept'")
    cfg = ConceptBuildConfig.from_args(args)
    features = build_concept(cfg)
    print(summarize(features))
    if cfg.out:
        base = Path(cfg.out).with_suffix("")
        print(f"written to {base}.safetensors + {base}.json")
    else:
        print("not saved (pass --out FILE to keep the features)")
    return 0
