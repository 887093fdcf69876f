"""Finding and reading bundles: ``bundle.json`` and where bundles live, without torch.

Commands read a model's defaults (steps, guidance, SAE, hookpoint) from its bundle when they
check their settings, and ``--help`` builds those settings; pulling, publishing and model
cards are in :mod:`saeuron.models.bundles`, which re-exports this.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeuron.utils.errors import FileFormatError
from saeuron.utils.files import BUNDLE, MODEL_INDEX, PACKAGE_DATA, user_bundles
from saeuron.utils.paths import check_relative, check_tree_inside

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
        name = concept.strip().lower()
        # A concept is free text (typed in the UI, sent to its API): only a plain file name
        # can name shipped features, never a path out of the bundle.
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            return None
        hookpoint = hookpoint or self.hookpoint_for(concept)
        base = self.folder / self.features / hookpoint / name
        return base if _is_file(base.with_suffix(".safetensors")) else None

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
            if _is_file(root / text / BUNDLE):
                return Bundle.read(root / text)
    folder = Path(text)
    if _is_file(folder / BUNDLE):
        return Bundle.read(folder)
    # The hub client takes longer to import than the rest of a command's --help: loaded
    # only for a name that is neither a bundle's nor a folder's.
    from saeuron.utils.hub import cached_file, is_hub_id  # noqa: PLC0415

    if is_hub_id(text):
        # Only a repo pulled before: looking a bundle up never asks the network.
        cached = cached_file(text, BUNDLE)
        if cached is not None and (cached.parent / MODEL_INDEX).is_file():
            # Someone else's folder: none of its files may lead out of it.
            return Bundle.read(check_tree_inside(cached.parent, f"bundle {text!r}"))
    return None


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a file; a name no file system can hold (too long, a NUL) is none.
    A model name is free text from a config or the command line, checked here before it is
    known to be a path."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def is_packaged(folder: Path) -> bool:
    """Whether ``folder`` lies inside the installed package's data."""
    return folder.resolve().is_relative_to(PACKAGE_DATA.resolve())
