"""``fid``: Fréchet Inception Distance of the technique's images to real ones, KID beside it.

The standard Inception weights and pytorch-fid's preprocessing (see
:mod:`saeuron.eval.inception`), so numbers compare with published FIDs computed the same way.
Reference images come from a folder (``reference``: a path; e.g. COCO val2014 for SD with
its captions as ``prompts_path``), from the image files of a hub dataset (``reference:
"hf:owner/name"``, downloaded once into the hub cache), or, for MiniCanvas, from its
procedural world (``reference: "minicanvas"``, the default when the technique's model is
MiniCanvas; prompts then cycle through every (object, style) test prompt).

FID needs every image at once, so it has no per-image score and no bootstrap interval; KID
is averaged over ``kid_subsets`` random subsets.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import snapshot_download
from PIL import Image

from saeuron.eval.inception import (
    frechet_distance,
    inception_requirement,
    kernel_inception_distance,
    load_inception,
)
from saeuron.eval.metrics.base import Item, Metric, MetricError, Requirement, register
from saeuron.eval.metrics.parts import PromptsPath
from saeuron.minicanvas.world import OBJECTS, STYLES, TEST_TEMPLATES, sample_images
from saeuron.utils.config import Config, ConfigError, check_range, field, refuse_null
from saeuron.utils.config_parts import MAX_LIMIT, BatchSize, Device, Limit, ModelName
from saeuron.utils.prompts import neutral_prompts, read_prompt_rows

MINICANVAS = "minicanvas"
HUB_PREFIX = "hf:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REFERENCE_SEED = 20_000
"""Seed of MiniCanvas reference images: away from the training and test seeds."""


@dataclass
class FidConfig(Config):
    reference: str | None = field(
        None, help="folder of real images, or 'minicanvas'; default: minicanvas for that model"
    )
    technique_model: ModelName = field(
        ModelName, flatten=True, help="the technique's model",
        describe={"model": "the technique's model (filled in from it)"},
    )  # fmt: skip
    prompt_source: PromptsPath = field(
        PromptsPath, flatten=True, help="the captions to sample",
        describe={
            "prompts_path": "captions to sample (CSV or text); default: MiniCanvas test "
            "prompts or the bundled neutral prompts"
        },
    )  # fmt: skip
    count: Limit = field(
        Limit(limit=1000), flatten=True, help="how many images",
        describe={"limit": "images sampled from the technique"},
        # Two images at least: a covariance of one image is undefined.
        limits={"limit": {"ge": 2, "le": MAX_LIMIT}},
    )  # fmt: skip
    reference_limit: int | None = field(
        None, ge=2, le=1_000_000, help="reference images; default: limit"
    )
    weights: str | None = field(None, help="Inception TorchScript file; default: fid-helper's")
    kid_subsets: int = field(100, ge=1, le=1_000_000, help="random subsets KID averages over")
    kid_subset_size: int = field(
        1000, ge=1, le=1_000_000, help="images per KID subset (capped by the sets)"
    )
    batches: BatchSize = field(
        BatchSize(batch_size=32), flatten=True, help="Inception batches",
        describe={"batch_size": "images per Inception call"},
        limits={"batch_size": {"le": 4096}},
    )  # fmt: skip
    runtime: Device = field(
        Device, flatten=True, help="where Inception runs",
        describe={"device": "device of the Inception network"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.reference is None and self.model == MINICANVAS:
            self.reference = MINICANVAS
        if self.reference is not None and self.reference != MINICANVAS:
            hub = self.reference.startswith(HUB_PREFIX) and "/" in self.reference
            if not hub and not Path(self.reference).is_dir():
                raise ConfigError(
                    "reference",
                    f"got {self.reference!r}; expected a folder, 'hf:owner/dataset' or "
                    "'minicanvas'",
                )
        refuse_null(self, "limit")
        for name in ("kid_subsets", "kid_subset_size"):
            check_range(name, getattr(self, name), ge=1)
        if self.reference_limit is not None:
            check_range("reference_limit", self.reference_limit, ge=2)


@register
class Fid(Metric):
    name = "fid"
    Config = FidConfig
    higher_is_better = {"fid": False, "kid": False}
    bootstrap = False
    model_field = "model"
    help = "FID and KID to reference images (standard Inception weights)"

    config: FidConfig

    def __init__(self, config: FidConfig):
        super().__init__(config)
        self._reference: np.ndarray | None = None
        self._generated: np.ndarray | None = None

    def requirements(self) -> list[Requirement]:
        ref = self.config.reference
        needs = [inception_requirement(self.config.weights)]
        needs.append(Requirement(
            f"reference images ({ref or 'none given'})", ref is not None,
            "" if ref else "set reference to a folder of real images",
        ))  # fmt: skip
        return needs

    def _reference_images(self) -> list[Any]:
        cfg = self.config
        count = cfg.reference_limit or cfg.limit
        if cfg.reference is None:
            raise MetricError(
                "fid needs reference images: set reference to a folder of real images "
                "(e.g. COCO val2014 with its captions as prompts_path)"
            )
        if cfg.reference == MINICANVAS:
            images, _, _ = sample_images(count, seed=REFERENCE_SEED)
            return [Image.fromarray(im) for im in images]
        folder = Path(cfg.reference)
        if cfg.reference.startswith(HUB_PREFIX):
            folder = self._download(cfg.reference.removeprefix(HUB_PREFIX))
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:count]
        if len(files) < 2:
            raise MetricError(f"fid: {cfg.reference} holds {len(files)} images; it needs >= 2")
        out = []
        for path in files:
            with Image.open(path) as im:
                out.append(im.convert("RGB"))
        return out

    @staticmethod
    def _download(repo: str) -> Path:
        try:
            return Path(snapshot_download(
                repo, repo_type="dataset", allow_patterns=[f"*{s}" for s in IMAGE_SUFFIXES]
            ))  # fmt: skip
        except Exception as err:
            raise MetricError(
                f"fid: cannot get the reference images of the hub dataset {repo} ({err}); "
                "set reference to a local folder"
            ) from err

    def prepare(self) -> None:
        inception = load_inception(self.config.weights, self.config.device)
        self._reference = inception.features(
            self._reference_images(), self.config.batch_size, desc="fid: reference"
        )

    def items(self, seed: int) -> list[Item]:
        cfg = self.config
        if cfg.prompts_path is not None:
            rows = read_prompt_rows(cfg.prompts_path, "prompts_path")
            prompts = [(r.prompt, r.seed) for r in rows]
        elif cfg.reference == MINICANVAS:
            prompts = [
                (TEST_TEMPLATES[0].format(object=o, style=s), None)
                for o in OBJECTS for s in STYLES
            ]  # fmt: skip
        else:
            prompts = [(p, None) for p in neutral_prompts()]
        items = []
        for i in range(cfg.limit):
            prompt, own = prompts[i % len(prompts)]
            items.append(Item(prompt, own if own is not None and i < len(prompts) else seed + i))
        return items

    def score(
        self, images: Sequence[Any], items: Sequence[Item], unerased: Sequence[Any] | None
    ) -> list[dict[str, Any]]:
        inception = load_inception(self.config.weights, self.config.device)
        self._generated = inception.features(images, self.config.batch_size, desc="fid: images")
        norms = np.linalg.norm(self._generated, axis=1)
        return [{"feature_norm": float(n)} for n in norms]

    def summarize(self, rows: Sequence[dict[str, Any]]) -> dict[str, float]:
        if self._generated is None or self._reference is None:
            raise MetricError("fid: features missing; prepare() and score() come first")
        gen = self._generated[[int(r["index"]) for r in rows]] if rows else self._generated
        return {
            "fid": frechet_distance(gen, self._reference),
            "kid": kernel_inception_distance(
                gen, self._reference, self.config.kid_subsets, self.config.kid_subset_size
            ),
        }
