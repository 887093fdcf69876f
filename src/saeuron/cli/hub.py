"""``saeuron hub pull | push``: bundles, SAEs and concept features on the Hugging Face hub."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saeuron.utils.errors import ConfigError
from saeuron.utils.files import BUNDLE, SAE_CONFIG

# The library (and torch with it) is imported by the handlers, not here: `saeuron hub
# --help` builds its parser from this module alone.


def add_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name,
        help=help_text,
        description="Pull a bundle (a model with its SAEs and concept features) from the "
        "Hugging Face hub, or publish a bundle, a folder of SAEs or a folder of concept "
        "features with a generated model card. The layouts are in docs/hub.md.",
    )
    actions = parser.add_subparsers(dest="hub_command", metavar="ACTION")
    actions.required = True
    pull = actions.add_parser(
        "pull",
        help="download a bundle; its repo id then names it wherever a model is accepted",
        description="Download every file of the bundle in REPO into the hub cache. From then on "
        "REPO names it wherever a model is accepted (--model REPO), offline too.",
    )
    pull.add_argument("repo", metavar="REPO", help="hub repo id, owner/name")
    pull.add_argument("--revision", help="branch, tag or commit (default: main)")
    pull.set_defaults(handler=run_pull)
    push = actions.add_parser(
        "push",
        help="publish a bundle, SAEs or concept features with a model card",
        description="Write FOLDER's model card (README.md) for REPO, then upload FOLDER to "
        "REPO (created if needed; files already there and not in FOLDER stay). FOLDER is a "
        "bundle (holds bundle.json), SAEs (one sub-folder per hookpoint with cfg.json) or "
        "concept features (<hookpoint>/<concept>.safetensors + .json).",
    )
    push.add_argument("folder", metavar="FOLDER", help="what to publish")
    push.add_argument("repo", metavar="REPO", help="hub repo id, owner/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument(
        "--license", default="mit", help="licence named in the card of SAEs or features"
    )
    push.set_defaults(handler=run_push)
    return parser


def run_pull(args: argparse.Namespace) -> int:
    from saeuron.models.bundles import pull_bundle

    bundle = pull_bundle(args.repo, revision=args.revision)
    print(f"pulled bundle {bundle.name!r} to {bundle.folder}; use it as --model {args.repo}")
    return 0


def kind_of(folder: Path) -> str:
    """``bundle``, ``saes`` or ``features``: what a folder to publish holds."""
    if (folder / BUNDLE).is_file():
        return "bundle"
    if any((p / SAE_CONFIG).is_file() for p in folder.iterdir() if p.is_dir()):
        return "saes"
    if any(folder.glob("*/*.safetensors")):
        return "features"
    raise ConfigError(
        "folder",
        f"{folder} holds no bundle.json, no <hookpoint>/cfg.json and no "
        "<hookpoint>/<concept>.safetensors: nothing saeuron publishes",
    )


def run_push(args: argparse.Namespace) -> int:
    from saeuron.erasure.features import ConceptFeatures, features_card
    from saeuron.models.bundles import push_bundle
    from saeuron.sae.model import sae_card
    from saeuron.utils.cards import write_card
    from saeuron.utils.hub import push_folder

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ConfigError("folder", f"{folder} is not a folder")
    kind = kind_of(folder)
    private = True if args.private else None
    if kind == "bundle":
        url = push_bundle(folder, args.repo, private=private)
    else:
        if kind == "saes":
            card = sae_card(folder, license=args.license, repo_id=args.repo)
        else:
            for path in folder.glob("*/*.safetensors"):
                ConceptFeatures.load(path)  # refuse a folder that does not read back
            card = features_card(folder, license=args.license, repo_id=args.repo)
        write_card(folder, card)
        url = push_folder(folder, args.repo, private=private)
    print(f"pushed {kind} {folder} to {args.repo}: {url}")
    return 0
