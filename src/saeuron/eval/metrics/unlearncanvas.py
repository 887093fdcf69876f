"""``unlearncanvas``: UA, IRA and CRA of the UnlearnCanvas protocol (docs/method.md, section 7).

Every (object, style) pair is prompted; an object and a style classifier judge each image.
With the erased concept a style: UA = 1 - style accuracy on its prompts, IRA = style accuracy
on the other styles' prompts, CRA = object accuracy (objects mirror this, CRA = style
accuracy on all styled images).

Two CRA definitions exist for a style (``cra``): ``styled``, object accuracy on the styled
images (UnlearnCanvas); ``plain``, object accuracy on plain "An image of {object}." images
sampled with the erasure on (SAeUron's evaluation code).

Classifiers: the bundled MiniCanvas one (``minicanvas``), a folder in its format
(``classifier.safetensors`` + ``classifier.json``), or UnlearnCanvas's published ViT-L/16
pair (``style_classifier`` = ``style50.pth``, ``object_classifier`` = ``style50_cls.pth``),
which runs the real benchmark. ``protocol: "published"`` fixes what the published numbers
used: seeds 188, 288, 588, 688, 888 for every prompt, JPEG quality 75 before classifying,
and, for the technique, DDIM with 100 steps at CFG 9.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from saeuron.eval.metrics.base import Item, Metric, Requirement, register
from saeuron.eval.unlearncanvas_vit import (
    OBJECTS,
    PUBLISHED_SEEDS,
    STYLES,
    UNSTYLED,
    jpeg_round_trip,
    load_classifier,
)
from saeuron.minicanvas.classifier import MiniCanvasClassifier
from saeuron.minicanvas.config_parts import Objects, PromptSeeds, RetainSeeds, Styles, Template
from saeuron.minicanvas.scoring import unlearning_scores
from saeuron.models.resolve import ResolvedModel, resolve_model
from saeuron.utils.config import Config, ConfigError, check_choice, check_range, field
from saeuron.utils.config_parts import BatchSize, Concept, Device
from saeuron.utils.text import read_json

BUNDLED = "minicanvas"
CRA_CHOICES = ("styled", "plain")
PROTOCOLS = ("custom", "published")
PUBLISHED_SAMPLING = {"num_inference_steps": 100, "guidance_scale": 9.0, "scheduler": "ddim"}
"""What the published protocol samples with (DDIM, 100 steps, CFG 9)."""
PUBLISHED_JPEG_QUALITY = 75
"""The published scripts save ``.jpg`` files with PIL's default quality and classify those."""


def _classifier_folder(named: ResolvedModel) -> Path:
    """A bundle's classifier (by the bundle's name), or a folder in the classifier's format."""
    bundle = named.bundle
    if bundle is not None and bundle.classifier_folder is not None:
        return bundle.classifier_folder
    return Path(named.name)


def _canonical(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


def _match(name: str, labels: Sequence[str]) -> str | None:
    """The label ``name`` means, ignoring case and space/underscore ("van gogh" = Van_Gogh)."""
    by_key = {_canonical(label): label for label in labels}
    return by_key.get(_canonical(name))


@dataclass
class UnlearnCanvasConfig(Config):
    erased: Concept = field(
        Concept, flatten=True, help="the erased object or style",
        describe={"concept": "the erased object or style; default: the technique's"},
    )  # fmt: skip
    classifier: str = field(
        BUNDLED, help="'minicanvas' (bundled) or a folder with classifier.safetensors/.json"
    )
    style_classifier: str | None = field(
        None, help="UnlearnCanvas's style50.pth (ViT-L/16, 51 styles); replaces 'classifier'"
    )
    object_classifier: str | None = field(
        None, help="UnlearnCanvas's style50_cls.pth (ViT-L/16, 20 objects)"
    )
    trust_pickle: bool = field(
        False, help="load classifier files that hold more than tensors (runs code from them)"
    )
    protocol: str = field(
        "custom",
        help="'published': seeds 188/288/588/688/888, JPEG 75, and DDIM, 100 steps, CFG 9 "
        "for the technique; 'custom': the fields below",
    )
    cra: str = field(
        "styled",
        help="CRA of a style: 'styled' (object accuracy on the styled images, UnlearnCanvas) "
        "or 'plain' (on plain_template images, SAeUron's code)",
    )
    prompt: Template = field(
        Template, flatten=True, help="the prompt",
        describe={"template": "prompt of every (object, style) pair"},
    )  # fmt: skip
    plain_template: str = field("An image of {object}.", help="prompt of cra='plain' images")
    prompted_objects: Objects = field(
        Objects, flatten=True, help="the objects prompted",
        describe={"objects": "prompt only these objects; default: all"},
    )  # fmt: skip
    prompted_styles: Styles = field(
        Styles, flatten=True, help="the styles prompted",
        describe={"styles": "prompt only these styles; default: all (the ViTs' Seed_Images "
                  "excluded)"},
    )  # fmt: skip
    prompt_seeds: PromptSeeds = field(
        PromptSeeds, flatten=True, help="the seeds of every prompt",
        describe={"seeds": "sample every prompt with each of these seeds (overrides *_seeds)"},
    )  # fmt: skip
    target_seeds: int = field(4, ge=1, le=1000, help="images per prompt that names the concept")
    retained: RetainSeeds = field(
        RetainSeeds, flatten=True, help="the retained seeds",
        describe={"retain_seeds": "images per prompt of the other concepts"},
        limits={"retain_seeds": {"ge": 1, "le": 1000}},
    )  # fmt: skip
    jpeg_quality: int | None = field(
        None, ge=1, le=95, help="classify each image after a JPEG round trip at this quality"
    )
    batches: BatchSize = field(
        BatchSize(batch_size=32), flatten=True, help="classifier batches",
        describe={"batch_size": "images per classifier call (ViT classifiers)"},
        limits={"batch_size": {"le": 4096}},
    )  # fmt: skip
    runtime: Device = field(
        Device, flatten=True, help="where the classifiers run",
        describe={"device": "device of the classifier; default: CPU"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.concept is None or not self.concept.strip():
            raise ConfigError("concept", "name the erased object or style")
        check_choice("protocol", self.protocol, PROTOCOLS)
        check_choice("cra", self.cra, CRA_CHOICES)
        for key in ("{object}", "{style}"):
            if key not in self.template:
                raise ConfigError("template", f"got {self.template!r}; must contain {key}")
        if "{object}" not in self.plain_template:
            raise ConfigError("plain_template", f"got {self.plain_template!r}; needs {{object}}")
        check_range("target_seeds", self.target_seeds, ge=1)
        check_range("retain_seeds", self.retain_seeds, ge=1)
        if self.protocol == "published":
            self.seeds = list(self.seeds or [])
            if self.seeds and self.seeds != list(_published_seeds()):
                raise ConfigError(
                    "seeds", f"got {self.seeds}; the published protocol uses {_published_seeds()}"
                )
            self.seeds = list(_published_seeds())
            if self.jpeg_quality is None:
                self.jpeg_quality = PUBLISHED_JPEG_QUALITY
            for name in ("objects", "styles"):
                if getattr(self, name) is not None:
                    raise ConfigError(name, "the published protocol prompts every one; drop it")
            if not self.vit:
                raise ConfigError(
                    "style_classifier",
                    "the published protocol is judged by UnlearnCanvas's classifiers: give "
                    "style_classifier (style50.pth) and object_classifier (style50_cls.pth)",
                )
        if self.seeds is not None:
            if not self.seeds or len(set(self.seeds)) != len(self.seeds):
                raise ConfigError("seeds", f"got {self.seeds}; give distinct seeds")
            for seed in self.seeds:
                check_range("seeds", seed, ge=0)
        if self.jpeg_quality is not None:
            check_range("jpeg_quality", self.jpeg_quality, ge=1, le=95)
        self._check_classifiers()
        objects, styles = self.labels()
        concept = _match(self.concept, [*objects, *styles])
        if concept is None:
            raise ConfigError(
                "concept",
                f"got {self.concept!r}; the classifier knows objects {', '.join(objects)} "
                f"and styles {', '.join(styles)}",
            )
        self.concept = concept
        if self.objects is not None:
            self.objects = self._subset("objects", self.objects, objects)
        if self.styles is not None:
            self.styles = self._subset("styles", self.styles, _prompted(styles))

    @property
    def vit(self) -> bool:
        return self.style_classifier is not None or self.object_classifier is not None

    def _check_classifiers(self) -> None:
        if self.vit:
            for name in ("style_classifier", "object_classifier"):
                value = getattr(self, name)
                if value is None:
                    raise ConfigError(
                        name, "give both style_classifier (style50.pth) and object_classifier "
                        "(style50_cls.pth)"
                    )  # fmt: skip
                if not Path(value).is_file():
                    raise ConfigError(name, f"file {value!r} does not exist")
            return
        # The classifier names a bundle or a folder: looked up once, here.
        folder = self.classifier_folder = _classifier_folder(
            resolve_model(self.classifier, "classifier")
        )
        if not (folder / "classifier.json").is_file():
            raise ConfigError(
                "classifier",
                f"got {self.classifier!r}; expected 'minicanvas' or a folder holding "
                "classifier.json and classifier.safetensors",
            )

    def _subset(self, name: str, chosen: list[str], allowed: list[str]) -> list[str]:
        out = []
        for value in chosen:
            label = _match(value, allowed)
            if label is None:
                raise ConfigError(name, f"got {value!r}; allowed: {', '.join(allowed)}")
            out.append(label)
        if not out:
            raise ConfigError(name, "must name at least one")
        return out

    def labels(self) -> tuple[list[str], list[str]]:
        """The classifiers' object and style classes, in their output order."""
        if self.vit:
            return list(OBJECTS), list(STYLES)
        info = read_json(self.classifier_folder / "classifier.json", "classifier")
        return list(info["objects"]), list(info["styles"])

    def prompted(self) -> tuple[list[str], list[str]]:
        """The objects and styles the prompts name."""
        objects, styles = self.labels()
        return self.objects or objects, self.styles or _prompted(styles)


def _prompted(styles: list[str]) -> list[str]:
    # The photographs the styles were applied to are a class, not a style to prompt.
    return [s for s in styles if s != UNSTYLED]


def _published_seeds() -> tuple[int, ...]:
    return PUBLISHED_SEEDS


def _style_text(style: str) -> str:
    return style.replace("_", " ")


@register
class UnlearnCanvas(Metric):
    name = "unlearncanvas"
    Config = UnlearnCanvasConfig
    higher_is_better = {"UA": True, "IRA": True, "CRA": True}
    concept_field = "concept"
    help = "UA / IRA / CRA judged by an object and a style classifier"

    config: UnlearnCanvasConfig

    def __init__(self, config: UnlearnCanvasConfig):
        super().__init__(config)
        self._vits: tuple[Any, Any] | None = None

    @classmethod
    def technique_settings(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        return dict(PUBLISHED_SAMPLING) if config.get("protocol") == "published" else {}

    def requirements(self) -> list[Requirement]:
        cfg = self.config
        if cfg.vit:
            return [
                Requirement(f"style classifier {cfg.style_classifier}", True),
                Requirement(f"object classifier {cfg.object_classifier}", True),
            ]
        folder = cfg.classifier_folder
        return [Requirement(f"classifier {folder}", (folder / "classifier.safetensors").is_file())]

    def prepare(self) -> None:
        if self.config.vit and self._vits is None:
            cfg = self.config
            device = cfg.device or "cpu"
            style = load_classifier(cfg.style_classifier, cfg.trust_pickle, len(STYLES))
            obj = load_classifier(cfg.object_classifier, cfg.trust_pickle, len(OBJECTS))
            self._vits = (style.to(device), obj.to(device))

    def _kind(self) -> str:
        objects, _ = self.config.labels()
        return "object" if self.config.concept in objects else "style"

    def _seeds(self, seed: int, hit: bool) -> list[int]:
        cfg = self.config
        if cfg.seeds is not None:
            return list(cfg.seeds)
        return [seed + k for k in range(cfg.target_seeds if hit else cfg.retain_seeds)]

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        kind = self._kind()
        objects, styles = cfg.prompted()
        items = []
        for obj, style in itertools.product(objects, styles):
            hit = (obj if kind == "object" else style) == cfg.concept
            prompt = cfg.template.format(object=obj, style=_style_text(style))
            meta = {"object": obj, "style": style}
            for s in self._seeds(seed, hit):
                items.append(Item(prompt, s, "target" if hit else "retain", meta))
        if cfg.cra == "plain" and kind == "style":
            for obj in objects:
                prompt = cfg.plain_template.format(object=obj)
                for s in self._seeds(seed, False):
                    items.append(Item(prompt, s, "plain", {"object": obj, "style": None}))
        return items

    def _predict(self, images: Sequence[Any], styled: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Object class of every image; style class of the styled ones (-1 elsewhere)."""
        cfg = self.config
        pred_s = np.full(len(images), -1, dtype=np.int64)
        if cfg.vit:
            self.prepare()
            assert self._vits is not None
            style_vit, object_vit = self._vits
            pred_o = object_vit.predict(list(images), cfg.batch_size, cfg.jpeg_quality)
            if styled:
                picked = [images[i] for i in styled]
                pred_s[styled] = style_vit.predict(picked, cfg.batch_size, cfg.jpeg_quality)
            return np.asarray(pred_o), pred_s

        classifier = MiniCanvasClassifier.load(cfg.classifier_folder)
        classifier.to(cfg.device or "cpu")
        if cfg.jpeg_quality is not None:
            images = [jpeg_round_trip(image, cfg.jpeg_quality) for image in images]
        pred_o, all_s = classifier.predict(list(images))
        pred_s[styled] = np.asarray(all_s)[styled]
        return np.asarray(pred_o), pred_s

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        objects, styles = self.config.labels()
        styled = [i for i, item in enumerate(items) if item.meta.get("style") is not None]
        pred_o, pred_s = self._predict(images, styled)
        rows = []
        for item, o, s in zip(items, pred_o, pred_s):
            row: dict[str, Any] = {
                "predicted_object": objects[int(o)],
                "object_correct": float(objects[int(o)] == item.meta["object"]),
            }
            if item.meta.get("style") is not None:
                row["predicted_style"] = styles[int(s)]
                row["style_correct"] = float(styles[int(s)] == item.meta["style"])
            rows.append(row)
        return rows

    def degenerate_scores(self, row: dict[str, Any]) -> dict[str, Any]:
        # A target image still counts as showing the concept (not erased); every other
        # judgement (retention, the other attribute) as lost.
        same = "object" if self._kind() == "object" else "style"
        scores = {"object_correct": 0.0, "style_correct": 0.0}
        if row["group"] == "target":
            scores[f"{same}_correct"] = 1.0
        return scores

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        same, cross = ("object", "style") if self._kind() == "object" else ("style", "object")

        def correct(key: str, groups: tuple[str, ...]) -> list[float]:
            return [float(r[key]) for r in rows if r["group"] in groups]

        plain = self.config.cra == "plain" and cross == "object"
        return unlearning_scores(
            correct(f"{same}_correct", ("target",)),
            correct(f"{same}_correct", ("retain",)),
            correct(f"{cross}_correct", ("plain",) if plain else ("target", "retain")),
        )
