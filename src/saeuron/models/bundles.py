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

Bundles are found by name among the folders shipped in the package (or in
``$SAEURON_BUNDLES``, os.pathsep-separated), or by the path of any folder that holds a
``bundle.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saeuron.utils.errors import FileFormatError
from saeuron.utils.files import BUNDLE, MODEL_INDEX, PACKAGE_DATA

BUNDLES_ENV = "SAEURON_BUNDLES"


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

    def stats_path(self, concept: str, hookpoint: str | None = None) -> Path | None:
        if self.stats is None:
            return None
        hookpoint = hookpoint or self.hookpoint_for(concept)
        return self.folder / self.stats / hookpoint / concept.strip().lower()

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
        }
        return out

    @classmethod
    def read(cls, folder: str | Path) -> Bundle:
        folder = Path(folder)
        path = folder / BUNDLE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
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
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FileFormatError(path, f"not a valid bundle description ({err})") from None


def bundle_roots() -> list[Path]:
    """Where named bundles are looked for: ``$SAEURON_BUNDLES``, then the package's data."""
    extra = [Path(p) for p in os.environ.get(BUNDLES_ENV, "").split(os.pathsep) if p]
    return [*extra, PACKAGE_DATA]


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
    return None


def is_bundle(model: str | Path | None) -> bool:
    return find_bundle(model) is not None
