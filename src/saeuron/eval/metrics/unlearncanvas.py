"""``unlearncanvas``: UA, IRA and CRA of the UnlearnCanvas protocol (docs/method.md, section 7).

Every (object, style) pair is prompted; an object and a style classifier judge each image.
With the erased concept a style: UA = 1 - style accuracy on its prompts, IRA = style accuracy
on the other styles' prompts, CRA = object accuracy on all prompts (objects mirror this).

The classifier is the bundled MiniCanvas one (``minicanvas``) or a folder in its format
(``classifier.safetensors`` + ``classifier.json`` naming the objects and styles): weights in
safetensors only, never a pickle.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.eval.metrics.base import Item, Metric, Requirement, mean_of, register
from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.models.bundles import find_bundle
from saeuron.utils.config import Config as BaseConfig
from saeuron.utils.config import ConfigError, check_range, field
from saeuron.utils.devices import check_device

BUNDLED = "minicanvas"


def _classifier_folder(name: str) -> Path:
    """A bundle's classifier (by the bundle's name), or a folder in the classifier's format."""
    bundle = find_bundle(name)
    if bundle is not None and bundle.classifier_folder is not None:
        return bundle.classifier_folder
    return Path(name)


@dataclass
class UnlearnCanvasConfig(BaseConfig):
    concept: str | None = field(None, help="the erased object or style; default: the technique's")
    classifier: str = field(
        BUNDLED, help="'minicanvas' (bundled) or a folder with classifier.safetensors/.json"
    )
    template: str = field(
        "An image of {object} in {style} style.", help="prompt of every (object, style) pair"
    )
    target_seeds: int = field(4, help="images per prompt that names the concept")
    retain_seeds: int = field(1, help="images per prompt of the other concepts")
    device: str | None = field(None, help="device of the classifier; default: CPU")

    def __post_init__(self) -> None:
        if self.concept is None or not self.concept.strip():
            raise ConfigError("concept", "name the erased object or style")
        for key in ("{object}", "{style}"):
            if key not in self.template:
                raise ConfigError("template", f"got {self.template!r}; must contain {key}")
        check_range("target_seeds", self.target_seeds, ge=1)
        check_range("retain_seeds", self.retain_seeds, ge=1)
        check_device("device", self.device)
        folder = _classifier_folder(self.classifier)
        if not (folder / "classifier.json").is_file():
            raise ConfigError(
                "classifier",
                f"got {self.classifier!r}; expected 'minicanvas' or a folder holding "
                "classifier.json and classifier.safetensors",
            )
        objects, styles = self.labels()
        if self.concept not in (*objects, *styles):
            raise ConfigError(
                "concept",
                f"got {self.concept!r}; the classifier knows objects {', '.join(objects)} "
                f"and styles {', '.join(styles)}",
            )

    def labels(self) -> tuple[list[str], list[str]]:
        info = json.loads(
            (_classifier_folder(self.classifier) / "classifier.json").read_text("utf-8")
        )
        return list(info["objects"]), list(info["styles"])


@register
class UnlearnCanvas(Metric):
    name = "unlearncanvas"
    Config = UnlearnCanvasConfig
    higher_is_better = {"UA": True, "IRA": True, "CRA": True}
    concept_field = "concept"
    help = "UA / IRA / CRA judged by an object and a style classifier"

    config: UnlearnCanvasConfig

    def requirements(self) -> list[Requirement]:
        folder = _classifier_folder(self.config.classifier)
        return [Requirement(f"classifier {folder}", (folder / "classifier.safetensors").is_file())]

    def _kind(self) -> str:
        objects, _ = self.config.labels()
        return "object" if self.config.concept in objects else "style"

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        objects, styles = cfg.labels()
        kind = self._kind()
        items = []
        for obj, style in itertools.product(objects, styles):
            hit = (obj if kind == "object" else style) == cfg.concept
            group = "target" if hit else "retain"
            for k in range(cfg.target_seeds if hit else cfg.retain_seeds):
                items.append(
                    Item(
                        cfg.template.format(object=obj, style=style),
                        seed + k,
                        group,
                        {"object": obj, "style": style},
                    )
                )
        return items

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        objects, styles = self.config.labels()
        classifier = MiniCanvasClassifier.load(_classifier_folder(self.config.classifier))
        classifier.to(self.config.device or "cpu")
        pred_o, pred_s = classifier.predict(list(images))
        rows = []
        for item, o, s in zip(items, np.asarray(pred_o), np.asarray(pred_s)):
            rows.append(
                {
                    "predicted_object": objects[int(o)],
                    "predicted_style": styles[int(s)],
                    "object_correct": float(objects[int(o)] == item.meta["object"]),
                    "style_correct": float(styles[int(s)] == item.meta["style"]),
                }
            )
        return rows

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        same, cross = ("object", "style") if self._kind() == "object" else ("style", "object")
        return {
            "UA": 1 - mean_of(rows, f"{same}_correct", "target"),
            "IRA": mean_of(rows, f"{same}_correct", "retain"),
            "CRA": mean_of(rows, f"{cross}_correct"),
        }
