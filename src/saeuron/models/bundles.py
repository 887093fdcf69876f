"""Bundled models: a diffusers folder plus everything erasing needs, described by data.

A bundle is a ``save_pretrained`` pipeline folder with a ``bundle.json`` beside
``model_index.json``. The JSON says how the model samples by default and where its SAEs,
concept features and classifier are, so generic code reads a bundle and never names one::

    {
      "name": "minicanvas",
      "num_inference_steps": 20, "guidance_scale": 7.5,
      "default_hookpoint": "unet.up_blocks.1.attentions.1",
      "saes": "saes", "features": "features", "stats": "stats",
      "supervised": "supervised/saes", "classifier": "classifier",
      "concepts": {"moon": {"kind": "object", "hookpoint": "unet.up_blocks.1.attentions.1"}},
      "default_prompt": "An image of moon in checkered style.", "default_concept": "moon"
    }

Bundles are found by name in ``$SAEURON_BUNDLES`` (os.pathsep-separated folders), then in
the user's folder (``$SAEURON_CACHE/bundles``, else ``~/.cache/saeuron/bundles``, where
``saeuron minicanvas train`` and ``assets`` write), then among those shipped in the package;
by the path of any folder that holds a ``bundle.json``; or by the id of a hub repo pulled
with :func:`pull_bundle` (``saeuron hub pull``). A bundle folder is a hub repo as it is:
docs/hub.md describes the layout and :func:`bundle_card` writes its model card.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from saeuron.models.bundle_lookup import (
    BUNDLES_ENV,
    PART_FIELDS,
    Bundle,
    BundleConcept,
    bundle_names,
    bundle_roots,
    find_bundle,
    is_packaged,
)
from saeuron.sae.model import sae_summary, sae_table
from saeuron.utils.cards import PROJECT_URL, card_metadata, render_card, table, write_card
from saeuron.utils.errors import FileFormatError
from saeuron.utils.files import BUNDLE, MODEL_INDEX, user_bundles
from saeuron.utils.hub import push_folder, snapshot

logger = logging.getLogger(__name__)

# Finding and reading bundles is re-exported from the torch-free module.
__all__ = [
    "BUNDLES_ENV",
    "PART_FIELDS",
    "Bundle",
    "BundleConcept",
    "bundle_card",
    "bundle_names",
    "bundle_roots",
    "find_bundle",
    "is_packaged",
    "pull_bundle",
    "push_bundle",
    "writable_folder",
]

def writable_folder(bundle: Bundle) -> Path:
    """The folder that changes to ``bundle`` are written into.

    A bundle shipped in the package is never written: the first write goes to a copy of it in
    the user's bundles (``$SAEURON_CACHE/bundles/<name>``), which from then on shadows the
    shipped one by name. Site-packages is often read-only, and a package that rewrites
    itself no longer matches its own record of installed files."""
    if not is_packaged(bundle.folder):
        return bundle.folder
    target = user_bundles() / bundle.name
    if not (target / BUNDLE).is_file():
        logger.info("copying the shipped bundle %r to %s, where it is changed", bundle.name, target)
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(bundle.folder, tmp)
        # A half-finished copy must never be found by name: it appears whole or not at all.
        if target.exists():
            _merge_into(tmp, target)
        else:
            tmp.replace(target)
    return target


def _merge_into(source: Path, target: Path) -> None:
    """Fill ``target`` (a folder without bundle.json) from ``source``, bundle.json last."""
    shutil.copytree(source, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns(BUNDLE))
    (source / BUNDLE).replace(target / BUNDLE)
    shutil.rmtree(source, ignore_errors=True)


def pull_bundle(repo_id: str, revision: str | None = None) -> Bundle:
    """Download the bundle in hub repo ``repo_id`` (every file) into the hub cache; from then
    on ``repo_id`` names it wherever a model is accepted, offline too."""
    folder = snapshot(repo_id, what="bundle", revision=revision)
    if not (folder / BUNDLE).is_file():
        raise FileFormatError(folder, f"{repo_id} holds no {BUNDLE}: not a saeuron bundle")
    return Bundle.read(folder)


def push_bundle(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """Publish a bundle folder as the hub repo ``repo_id``: its card (README.md) is written
    for that id first, then every file is uploaded. Returns the commit URL."""
    bundle = Bundle.read(folder)
    write_card(bundle.folder, bundle_card(bundle, repo_id=repo_id))
    return push_folder(
        bundle.folder, repo_id, private=private, token=token,
        commit_message=commit_message or f"Upload the {bundle.name} bundle",
    )  # fmt: skip


def bundle_card(bundle: Bundle, repo_id: str | None = None) -> str:
    """The model card of a bundle folder, from its ``bundle.json`` and the files present."""
    folder = bundle.folder
    parts = [
        ("the diffusers pipeline", MODEL_INDEX, (folder / MODEL_INDEX).is_file()),
        ("SAEs, one folder per hookpoint", f"{bundle.saes}/", (folder / bundle.saes).is_dir()),
        ("concept features", f"{bundle.features}/", (folder / bundle.features).is_dir()),
        ("per-step concept statistics", f"{bundle.stats}/", bool(bundle.stats)
         and (folder / str(bundle.stats)).is_dir()),
        ("supervised (SAEmnesia) SAEs", f"{bundle.supervised}/", bool(bundle.supervised)
         and (folder / str(bundle.supervised)).is_dir()),
        ("a classifier of the concepts", f"{bundle.classifier}/", bool(bundle.classifier)
         and (folder / str(bundle.classifier)).is_dir()),
    ]  # fmt: skip
    rows, _, data = sae_summary(folder / bundle.saes)
    kinds = bundle.kinds()
    repo = repo_id or str(folder)
    sections = [
        bundle.description
        or f"A saeuron bundle: a diffusion pipeline with the SAEs and concept features that "
        f"erase concepts from it at inference time with [saeuron]({PROJECT_URL}).",
        "## What is in it\n\n"
        + table(["what", "where"], [(what, f"`{where}`") for what, where, ok in parts if ok])
        + "\n\n`bundle.json` says how the model samples by default and where each part is.",
        "## Defaults\n\n"
        + table(
            ["setting", "value"],
            [
                ("denoising steps", bundle.num_inference_steps),
                ("guidance scale", bundle.guidance_scale),
                ("hookpoint of free-text concepts", f"`{bundle.default_hookpoint}`"),
            ],
        ),
        "## SAEs\n\n"
        + (sae_table(rows) if rows else "None yet.")
        + "\n\nFVU: fraction of variance unexplained on held-out activations."
        + "".join(f"\n\nTraining data: {d}" for d in sorted(data)),
        "## Concepts\n\n"
        + (
            "\n".join(
                f"- {kind} (at `{bundle.concepts[names[0]].hookpoint}`): {', '.join(names)}"
                for kind, names in kinds.items()
            )
            or "None named; any phrase can be erased (its features are computed first)."
        ),
        "## Use\n\n```bash\npip install saeuron\n"
        + (f"saeuron hub pull {repo}\n" if repo_id else "")
        + f'saeuron generate --model {repo} --erase {bundle.default_concept or "CONCEPT"} '
        f'--prompt "{bundle.default_prompt or "PROMPT"}" --out erased.png\n```\n\n'
        "```python\nimport saeuron\n\n"
        f'tech = saeuron.SAeUron(erase_concept="{bundle.default_concept or "CONCEPT"}", '
        f'model="{repo}")\n'
        f'images = tech.generate(["{bundle.default_prompt or "PROMPT"}"], seed=0)\n```',
        "## Licence\n\n"
        + (
            f"Released under the `{bundle.license}` licence."
            if bundle.license
            else "No licence was given."
        ),
    ]
    metadata = card_metadata(bundle.license, tags=("diffusers", "text-to-image"))
    metadata["pipeline_tag"] = "text-to-image"
    return render_card(metadata, f"{bundle.name}: a saeuron bundle", sections)
