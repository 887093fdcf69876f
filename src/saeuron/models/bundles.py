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

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeuron.sae.model import sae_summary, sae_table
from saeuron.utils.cards import PROJECT_URL, card_metadata, render_card, table, write_card
from saeuron.utils.errors import FileFormatError
from saeuron.utils.files import BUNDLE, MODEL_INDEX, PACKAGE_DATA, user_bundles
from saeuron.utils.hub import cached_file, is_hub_id, push_folder, snapshot
from saeuron.utils.paths import check_relative, check_tree_inside

logger = logging.getLogger(__name__)

BUNDLES_ENV = "SAEURON_BUNDLES"
PART_FIELDS = ("saes", "features", "stats", "supervised", "classifier")
"""The fields of bundle.json that name a folder of the bundle."""


@dataclass(frozen=True)
class BundleConcept:
    kind: str
    """What the concept is among the bundle's concepts (e.g. ``object`` or ``style``)."""
    hookpoint: str
    """The block its features are read and edited at."""


@dataclass(frozen=True)
class Bundle:
    name: str
    folder: Path
    num_inference_steps: int
    guidance_scale: float
    default_hookpoint: str
    saes: str = "saes"
    features: str = "features"
    stats: str | None = None
    supervised: str | None = None
    classifier: str | None = None
    concepts: dict[str, BundleConcept] = field(default_factory=dict)
    default_prompt: str | None = None
    default_concept: str | None = None
    description: str | None = None
    """One paragraph for people (the model card's opening)."""
    license: str | None = None

    @property
    def shipped(self) -> bool:
        """Whether the pipeline itself is there (a bundle may describe a model not built yet)."""
        return (self.folder / MODEL_INDEX).is_file()

    def concept(self, name: str) -> BundleConcept | None:
        return self.concepts.get(name.strip().lower())

    def kinds(self) -> dict[str, list[str]]:
        """Concept names per kind, in the bundle's order."""
        out: dict[str, list[str]] = {}
        for name, entry in self.concepts.items():
            out.setdefault(entry.kind, []).append(name)
        return out

    def hookpoint_for(self, concept: str | None) -> str:
        """The block a concept is erased at; free-text concepts use the default block."""
        entry = self.concept(concept) if concept else None
        return entry.hookpoint if entry else self.default_hookpoint

    @property
    def sae_folder(self) -> Path:
        return self.folder / self.saes

    def features_path(self, concept: str, hookpoint: str | None = None) -> Path | None:
        """Path (without suffix) of a concept's shipped features, or None if not shipped."""
        hookpoint = hookpoint or self.hookpoint_for(concept)
        base = self.folder / self.features / hookpoint / concept.strip().lower()
        return base if base.with_suffix(".safetensors").is_file() else None

    @property
    def supervised_folder(self) -> Path | None:
        return self.folder / self.supervised if self.supervised else None

    @property
    def classifier_folder(self) -> Path | None:
        return self.folder / self.classifier if self.classifier else None

    # -- persistence ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "default_hookpoint": self.default_hookpoint,
            "saes": self.saes,
            "features": self.features,
            "stats": self.stats,
            "supervised": self.supervised,
            "classifier": self.classifier,
            "concepts": {
                name: {"kind": c.kind, "hookpoint": c.hookpoint}
                for name, c in self.concepts.items()
            },
            "default_prompt": self.default_prompt,
            "default_concept": self.default_concept,
            "description": self.description,
            "license": self.license,
        }
        return out

    def _checked(self, source: Path) -> Bundle:
        """This bundle, refused when a part it names lies outside its folder: a bundle can
        come from the hub, and its parts are read (and written by commands that change it)."""
        for name in PART_FIELDS:
            value = getattr(self, name)
            if value is not None:
                check_relative(self.folder, str(value), name, source)
        return self

    @classmethod
    def read(cls, folder: str | Path) -> Bundle:
        folder = Path(folder)
        path = folder / BUNDLE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            concepts = {
                str(name).lower(): BundleConcept(str(c["kind"]), str(c["hookpoint"]))
                for name, c in data.get("concepts", {}).items()
            }
            return cls(
                name=str(data["name"]),
                folder=folder,
                num_inference_steps=int(data["num_inference_steps"]),
                guidance_scale=float(data["guidance_scale"]),
                default_hookpoint=str(data["default_hookpoint"]),
                saes=str(data.get("saes", "saes")),
                features=str(data.get("features", "features")),
                stats=data.get("stats"),
                supervised=data.get("supervised"),
                classifier=data.get("classifier"),
                concepts=concepts,
                default_prompt=data.get("default_prompt"),
                default_concept=data.get("default_concept"),
                description=data.get("description"),
                license=data.get("license"),
            )._checked(path)
        except FileFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise FileFormatError(path, f"not a valid bundle description ({err})") from None


def bundle_roots() -> list[Path]:
    """Where named bundles are looked for: ``$SAEURON_BUNDLES``, the user's bundles, then
    the package's data."""
    extra = [Path(p) for p in os.environ.get(BUNDLES_ENV, "").split(os.pathsep) if p]
    return [*extra, user_bundles(), PACKAGE_DATA]


def bundle_names() -> list[str]:
    names: list[str] = []
    for root in bundle_roots():
        if root.is_dir():
            for child in sorted(root.iterdir()):
                if (child / BUNDLE).is_file() and child.name not in names:
                    names.append(child.name)
    return names


def find_bundle(model: str | Path | None) -> Bundle | None:
    """The bundle ``model`` names (a bundle name or a folder with a bundle.json), or None."""
    if model is None:
        return None
    text = str(model)
    if "/" not in text and os.sep not in text:
        for root in bundle_roots():
            if (root / text / BUNDLE).is_file():
                return Bundle.read(root / text)
    folder = Path(text)
    if (folder / BUNDLE).is_file():
        return Bundle.read(folder)
    if is_hub_id(text):
        # Only a repo pulled before: looking a bundle up never asks the network.
        cached = cached_file(text, BUNDLE)
        if cached is not None and (cached.parent / MODEL_INDEX).is_file():
            # Someone else's folder: none of its files may lead out of it.
            return Bundle.read(check_tree_inside(cached.parent, f"bundle {text!r}"))
    return None


def is_packaged(folder: Path) -> bool:
    """Whether ``folder`` lies inside the installed package's data."""
    return folder.resolve().is_relative_to(PACKAGE_DATA.resolve())


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
