"""``saeuron concept build``: select the SAE latents of a concept (statistics are cached)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saeuron.erasure.concepts.build import ConceptBuildConfig, build_concept, summarize


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Find the SAE latents that encode a concept: its statistics against other "
        "concepts (contrastive), or the top latents of its own images (shortcut).",
    )
    actions = parser.add_subparsers(dest="concept_command", metavar="ACTION")
    actions.required = True
    build = actions.add_parser(
        "build",
        help="select a concept's latents (statistics are cached)",
        description="Select the SAE latents to edit for CONCEPT and optionally save them.",
    )
    ConceptBuildConfig.add_arguments(build)
    build.set_defaults(handler=run_build)
    return parser


def run_build(args: argparse.Namespace) -> int:
    cfg = ConceptBuildConfig.from_args(args)
    features = build_concept(cfg)
    print(summarize(features))
    if cfg.out:
        base = Path(cfg.out).with_suffix("")
        print(f"written to {base}.safetensors + {base}.json")
    else:
        print("not saved (pass --out FILE to keep the features)")
    return 0
