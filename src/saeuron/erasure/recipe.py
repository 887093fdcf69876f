"""An erasure recipe: one portable, validated, versioned file that, with the SAEs and features
it names, is everything needed to reproduce an erasure.

A recipe records the base model (its id and a fingerprint of the hooked modules' shapes),
the sampling settings its scores were measured with, and per concept one or more *edits*.
An edit is one SAE at one site (a denoiser block's output, its guidance ``cond - uncond``, or
a text encoder's output), the features it edits there (latent ids and the statistics the
rule needs, with the settings that selected them), a rule and a strength, a window of the
schedule and the CFG halves. SAeUron's published method is a recipe with one ``scale`` edit
per concept; the tuned MiniCanvas erasures use several sites and the ``anchor`` rule.

A recipe is data: it never names code to run. Its paths are relative to the recipe's
folder; a recipe pulled from the hub may not point outside its own snapshot (symbolic links
included), while a local recipe may name any local path.

Layout on disk (the hub repo of a recipe is the same folder)::

    recipe.json                          this file (any name ending in .json)
    features/<hookpoint>/<name>.*        features (NAME.safetensors + NAME.json)
    saes/<hookpoint>/...                 SAEs (or a hub id / local path)
    README.md                            the card (:func:`recipe_card`)
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from saeuron.erasure.erase_config import MAX_MULTIPLIER
from saeuron.sae.formats import read_json_object
from saeuron.utils.cards import card_metadata, render_card, table, write_card
from saeuron.utils.errors import ConfigError, FileFormatError
from saeuron.utils.hub import is_hub_id, push_folder, snapshot
from saeuron.utils.io import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT = "saeuron.recipe"
FORMAT_VERSION = 2
"""Bumped when a recipe written now could not be read correctly by an older saeuron. Version
1 named an edit's ``guidance_half`` ``cfg_half``; it is read, and migrated, still."""
RECIPE_SUFFIX = ".json"
FEATURES_SUFFIXES = (".safetensors", ".json")
"""A features path names a pair of files (``ConceptFeatures.save``)."""
IDENTITY_STRENGTH = {"ablate": 1.0, "anchor": 1.0, "project": 1.0, "scale": 0.0}
"""The strength at which each rule changes nothing (``scale`` has none: 0 is its limit), the
origin of a slider from 'off' (0) to the tuned strength (1)."""


class _Strict(BaseModel):
    # Unknown keys are refused: a misspelt key would otherwise be a silent no-op.
    model_config = ConfigDict(extra="forbid", frozen=False)


class SaeRef(_Strict):
    """Where an edit's SAE lives: ``path`` (relative to the recipe, or absolute) or ``hub``
    (a repo id), and the fingerprint the features were selected with."""

    path: str | None = None
    hub: str | None = None
    fingerprint: str | None = None

    @field_validator("hub")
    @classmethod
    def _hub_id(cls, value: str | None) -> str | None:
        if value is not None and not is_hub_id(value):
            raise ValueError(f"got {value!r}; a hub id is 'owner/name'")
        return value


class FeaturesRef(_Strict):
    """An edit's features (``NAME.safetensors`` + ``NAME.json``, ``path`` without suffix),
    their SHA-256, and the selection settings that chose them."""

    path: str
    sha256: str | None = None
    selection: dict[str, float | int | str | bool | None] = Field(default_factory=dict)


class AnchorRef(_Strict):
    """One anchor candidate of an ``anchor`` edit: a concept and its features at the site."""

    concept: str
    features: FeaturesRef


class Edit(_Strict):
    """One SAE edit of one concept at one site."""

    hookpoint: str
    activation_site: Literal["output", "update", "guidance"] = "output"
    sae: SaeRef
    features: FeaturesRef
    rule: Literal["scale", "ablate", "anchor", "project"]
    strength: float
    window: list[float] | None = None
    guidance_half: Literal["cond", "both"] = "cond"
    anchors: list[AnchorRef] = Field(default_factory=list)
    """For ``anchor``: the candidates in order. Erased together with the first, the next one
    not erased is used; with none left, the edit falls back to ``ablate``."""

    @field_validator("strength")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value) or abs(value) > MAX_MULTIPLIER:
            raise ValueError(f"got {value!r}; need a finite number in [-{MAX_MULTIPLIER:g}, "
                             f"{MAX_MULTIPLIER:g}]")  # fmt: skip
        return float(value)

    @field_validator("window")
    @classmethod
    def _window(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and (
            len(value) != 2
            or not all(math.isfinite(v) for v in value)
            or not 0.0 <= value[0] <= value[1] <= 1.0
        ):
            raise ValueError(f"got {value!r}; need [start, end] with 0 <= start <= end <= 1")
        return value

    def model_post_init(self, _context: Any) -> None:
        if self.rule == "anchor" and not self.anchors:
            raise ValueError("rule 'anchor' needs at least one entry in anchors")
        if self.rule != "anchor" and self.anchors:
            raise ValueError(f"anchors are for rule 'anchor', not {self.rule!r}")


class ConceptRecipe(_Strict):
    kind: str | None = None
    edits: list[Edit] = Field(min_length=1)
    scores: dict[str, float] = Field(default_factory=dict)
    """Measured scores of this concept (UA, IRA, CRA, ...) under ``Recipe.sampling``."""


class BaseModelRef(_Strict):
    id: str
    fingerprint: str | None = None
    """:func:`module_fingerprint` of the hooked modules; checked against the pipeline."""


class SamplingRef(_Strict):
    num_inference_steps: int = Field(ge=1, le=10_000)
    guidance_scale: float
    height: int | None = None
    width: int | None = None
    scheduler: str | None = None

    @field_validator("guidance_scale")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"got {value!r}; need a finite number")
        return value


class Recipe(_Strict):
    """An erasure recipe (see the module's doc). Load with :meth:`load`, write with
    :meth:`save`; apply with :func:`saeuron.attach` or ``SAeUron(recipe=...)``."""

    format: Literal["saeuron.recipe"] = FORMAT
    format_version: int = FORMAT_VERSION
    base_model: BaseModelRef
    sampling: SamplingRef
    concepts: dict[str, ConceptRecipe] = Field(min_length=1)
    anchor_fallback: Literal["ablate"] = "ablate"
    description: str = ""
    tuning: dict[str, Any] = Field(default_factory=dict)
    """How the recipe was made: the tuner, its objective and weights, the trials table."""

    _root: Path = PrivateAttr(default_factory=Path.cwd)
    _contained: bool = PrivateAttr(default=False)

    # -- reading and writing --------------------------------------------------------------

    @classmethod
    def from_dict(
        cls, data: Any, root: str | Path = ".", contained: bool = False, source: str = "recipe"
    ) -> Recipe:
        """Validate ``data``; every error names its dotted path (``concepts.moon.edits.0``)."""
        if not isinstance(data, dict):
            raise FileFormatError(source, f"expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise FileFormatError(
                source, f"format_version {version} was written by a newer saeuron (this one "
                f"reads up to {FORMAT_VERSION}); upgrade saeuron"
            )
        if version == 1:
            data = _migrate_v1(data)
        try:
            recipe = cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "recipe"
            message = first["msg"]
            if first["type"] == "extra_forbidden":
                message = "unknown key (see the recipe format in the docs)"
            raise ConfigError(f"recipe.{where}", f"{message} (in {source})") from None
        recipe._root = Path(root).resolve()
        recipe._contained = contained
        if contained:
            recipe.check_contained()
        return recipe

    @classmethod
    def load(cls, source: str | Path, revision: str | None = None) -> Recipe:
        """A recipe from a local ``.json`` file, a folder holding one ``recipe.json`` (or
        several recipes, merged), or a hub repo id (its ``recipe.json``; its paths must stay
        inside the snapshot)."""
        path = Path(source)
        contained = False
        if not path.exists() and is_hub_id(str(source)):
            path = snapshot(str(source), "recipe", revision=revision)
            contained = True
        if path.is_dir() and not (path / "recipe.json").is_file():
            # A folder of recipes (a bundle's recipes/): every one, merged.
            found = sorted(p for p in path.glob(f"*{RECIPE_SUFFIX}") if p.is_file())
            if not found:
                raise FileNotFoundError(f"recipe: no recipe.json or *.json recipe in {path}")
            return cls.merge([cls.load(p) for p in found])
        if path.is_dir():
            path = path / "recipe.json"
        if not path.is_file():
            raise FileNotFoundError(f"recipe: no file {path}")
        data = read_json_object(path)
        return cls.from_dict(data, root=path.parent, contained=contained, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)

    def save(self, path: str | Path) -> Path:
        """Write the recipe (atomically). Its paths stay as they are: relative ones are read
        from the folder it is written to."""
        path = Path(path)
        if path.suffix != RECIPE_SUFFIX:
            raise ConfigError("out", f"got {str(path)!r}; a recipe file ends in .json")
        atomic_write_json(path, self.to_dict())
        self._root = path.parent.resolve()
        return path

    @property
    def root(self) -> Path:
        return self._root

    @property
    def names(self) -> list[str]:
        return list(self.concepts)

    # -- paths ---------------------------------------------------------------------------

    def resolve(self, relative: str) -> Path:
        """``relative`` read from the recipe's folder (an absolute path stays as it is)."""
        path = Path(relative)
        return path if path.is_absolute() else self._root / path

    def features_paths(self) -> list[str]:
        paths = []
        for concept in self.concepts.values():
            for edit in concept.edits:
                paths.append(edit.features.path)
                paths.extend(a.features.path for a in edit.anchors)
        return paths

    def check_contained(self) -> None:
        """Refuse a path that leaves the recipe's folder (symbolic links followed): what a
        recipe from the hub may name is what its own repository holds."""
        root = self._root.resolve()
        named = [*self.features_paths()]
        named += [e.sae.path for c in self.concepts.values() for e in c.edits if e.sae.path]
        for relative in named:
            if Path(relative).is_absolute():
                raise FileFormatError(
                    self._root, f"recipe from the hub names an absolute path {relative!r}"
                )
            for candidate in (self.resolve(relative), *self._feature_files(relative)):
                real = candidate.resolve()
                if real != root and root not in real.parents:
                    raise FileFormatError(
                        self._root, f"recipe from the hub names {relative!r}, which leads "
                        f"outside its own folder (to {real}); refused"
                    )

    def _feature_files(self, relative: str) -> list[Path]:
        base = self.resolve(relative)
        return [base.with_name(base.name + s) for s in FEATURES_SUFFIXES]

    def check_files(self) -> list[str]:
        """Every local file the recipe needs that is missing, and every features file whose
        SHA-256 differs from the recorded one: one message per problem."""
        problems = []
        for concept, entry in self.concepts.items():
            for i, edit in enumerate(entry.edits):
                refs = [(f"concepts.{concept}.edits.{i}.features", edit.features)]
                refs += [(f"concepts.{concept}.edits.{i}.anchors.{j}.features", a.features)
                         for j, a in enumerate(edit.anchors)]  # fmt: skip
                for where, ref in refs:
                    tensors = self.resolve(ref.path).with_name(
                        Path(ref.path).name + ".safetensors"
                    )
                    if not tensors.is_file():
                        problems.append(f"{where}: no file {tensors}")
                    elif ref.sha256 and file_sha256(tensors) != ref.sha256:
                        problems.append(f"{where}: {tensors} has changed since the recipe was "
                                        "written (SHA-256 differs)")  # fmt: skip
                if edit.sae.path and not self.resolve(edit.sae.path).exists():
                    problems.append(f"concepts.{concept}.edits.{i}.sae.path: no folder "
                                    f"{self.resolve(edit.sae.path)}")  # fmt: skip
        return problems

    # -- combining -------------------------------------------------------------------------

    def subset(self, concepts: Iterable[str]) -> Recipe:
        """The same recipe with only ``concepts`` (anchors may still name the others)."""
        chosen = list(concepts)
        unknown = [c for c in chosen if c not in self.concepts]
        if unknown:
            raise ConfigError(
                "erase", f"{unknown} not in the recipe; it holds {', '.join(self.concepts)}"
            )
        copy = self.model_copy(deep=True)
        copy.concepts = {c: self.concepts[c] for c in chosen}
        copy._root, copy._contained = self._root, self._contained
        return copy

    @classmethod
    def merge(cls, recipes: Sequence[Recipe]) -> Recipe:
        """One recipe erasing every concept of ``recipes`` (same base model and sampling);
        relative paths are made absolute so that each still finds its files."""
        if not recipes:
            raise ConfigError("recipe", "nothing to merge")
        first = recipes[0]
        concepts: dict[str, ConceptRecipe] = {}
        for recipe in recipes:
            if recipe.base_model.id != first.base_model.id or (
                recipe.sampling != first.sampling
            ):
                raise ConfigError(
                    "recipe", f"recipes for {first.base_model.id!r} ({first.sampling}) and "
                    f"{recipe.base_model.id!r} ({recipe.sampling}) cannot be combined"
                )  # fmt: skip
            for name, entry in recipe.concepts.items():
                if name in concepts:
                    raise ConfigError("recipe", f"{name!r} is in two of the recipes combined")
                concepts[name] = recipe.absolute(entry)
        description = "; ".join(r.description for r in recipes if r.description)
        merged = cls(base_model=first.base_model, sampling=first.sampling, concepts=concepts,
                     description=description)  # fmt: skip
        merged._contained = any(r._contained for r in recipes)
        return merged

    def absolute(self, entry: ConceptRecipe) -> ConceptRecipe:
        copy = entry.model_copy(deep=True)
        for edit in copy.edits:
            edit.features.path = str(self.resolve(edit.features.path))
            for anchor in edit.anchors:
                anchor.features.path = str(self.resolve(anchor.features.path))
            if edit.sae.path:
                edit.sae.path = str(self.resolve(edit.sae.path))
        return copy

    # -- the hub -------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, scores_note: str = "") -> Path:
        """A self-contained folder: ``recipe.json``, a copy of every features file and local
        SAE it names, and the card; what :meth:`push_to_hub` uploads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        copy = self.model_copy(deep=True)
        copied: dict[str, str] = {}
        for entry in copy.concepts.values():
            for edit in entry.edits:
                for ref in (edit.features, *(a.features for a in edit.anchors)):
                    ref.path = self._copy_features(ref.path, edit.hookpoint, folder, copied)
                if edit.sae.path:
                    edit.sae.path = self._copy_sae(edit.sae.path, edit.hookpoint, folder, copied)
        copy.save(folder / "recipe.json")
        write_card(folder, recipe_card(copy, scores_note))
        return folder / "recipe.json"

    def _copy_features(self, path: str, hookpoint: str, folder: Path, done: dict) -> str:
        source = self.resolve(path)
        target = f"features/{hookpoint}/{source.name}"
        if done.setdefault(str(source), target) == target:
            copy_features(source, folder / target)
        return done[str(source)]

    def _copy_sae(self, path: str, hookpoint: str, folder: Path, done: dict) -> str:
        source = self.resolve(path)
        if str(source) in done:
            return done[str(source)]
        # An SAE folder keeps one sub-folder per hookpoint; copy only the one edited.
        inner = source / hookpoint if (source / hookpoint).is_dir() else source
        target = folder / "saes" / hookpoint
        if not target.exists():
            shutil.copytree(inner, target, ignore=shutil.ignore_patterns("train_log.json"))
        done[str(source)] = "saes"
        return "saes"

    def push_to_hub(self, repo_id: str, private: bool = False, token: str | None = None) -> str:
        """Upload :meth:`save_pretrained`'s folder to ``repo_id``; returns the repo's URL."""
        with tempfile.TemporaryDirectory(prefix="saeuron-recipe-") as tmp:
            self.save_pretrained(tmp)
            return push_folder(tmp, repo_id, private=private, token=token,
                               commit_message="saeuron erasure recipe")  # fmt: skip


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A version-1 recipe as version 2: its edits' ``cfg_half`` is ``guidance_half``. Only
    the name changed, so the migrated recipe erases exactly as the original did. Anything
    malformed is left for validation to report."""
    data = copy.deepcopy(data)
    data["format_version"] = FORMAT_VERSION
    concepts = data.get("concepts")
    for entry in concepts.values() if isinstance(concepts, dict) else ():
        edits = entry.get("edits") if isinstance(entry, dict) else None
        for edit in edits if isinstance(edits, list) else ():
            if isinstance(edit, dict) and "cfg_half" in edit and "guidance_half" not in edit:
                edit["guidance_half"] = edit.pop("cfg_half")
    return data


def copy_features(source: Path, target: Path) -> None:
    """The features pair at ``source`` to ``target`` (both paths without suffix)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for suffix in FEATURES_SUFFIXES:
        shutil.copyfile(
            source.with_name(source.name + suffix), target.with_name(target.name + suffix)
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_recipe_path(value: Any) -> bool:
    """Whether ``value`` names a recipe rather than an SAE: a ``.json`` path."""
    return isinstance(value, (str, Path)) and str(value).endswith(RECIPE_SUFFIX)


def resolve_anchors(
    recipe: Recipe, erased: Sequence[str]
) -> dict[str, list[tuple[Edit, str | None]]]:
    """Each erased concept's edits with the anchor each ``anchor`` edit uses.

    An ``anchor`` rule writes its anchor concept in; erased together with that anchor it
    would write in what another edit takes out, so the first candidate not erased is used,
    and with none left the edit falls back to ``ablate`` (``None``) at the same strength.
    """
    gone = set(erased)
    resolved: dict[str, list[tuple[Edit, str | None]]] = {}
    for concept in erased:
        edits = []
        for edit in recipe.concepts[concept].edits:
            anchor = None
            if edit.rule == "anchor":
                anchor = next((a.concept for a in edit.anchors if a.concept not in gone), None)
                if anchor != edit.anchors[0].concept:
                    logger.info("%s: its anchor %s is erased too; using %s", concept,
                                edit.anchors[0].concept, anchor or "ablate")  # fmt: skip
            edits.append((edit, anchor))
        resolved[concept] = edits
    return resolved


def module_fingerprint(shapes: dict[str, list[tuple[str, tuple[int, ...]]]]) -> str:
    """SHA-256 of the hooked modules' parameter names and shapes (``hookpoint -> [(name,
    shape)]``): the same architecture gives the same fingerprint, whatever its weights."""
    text = json.dumps({h: [[n, list(s)] for n, s in v] for h, v in sorted(shapes.items())})
    return hashlib.sha256(text.encode()).hexdigest()


def recipe_card(recipe: Recipe, note: str = "") -> str:
    """The model card of a recipe: base model, sites, rules, sampling and scores."""
    rows = []
    for name, entry in recipe.concepts.items():
        for edit in entry.edits:
            where = "text encoder" if edit.hookpoint.startswith("text_encoder") else (
                "guidance (cond - uncond)" if edit.activation_site == "guidance" else
                f"denoiser {edit.activation_site}"
            )  # fmt: skip
            anchors = " > ".join(a.concept for a in edit.anchors) or "-"
            window = "all steps" if edit.window is None else f"{edit.window[0]}-{edit.window[1]}"
            rows.append([name, edit.hookpoint, where, edit.rule, f"{edit.strength:g}", anchors,
                         window, edit.guidance_half])  # fmt: skip
    score_rows = [[n, *(f"{e.scores.get(k, float('nan')):.3f}" for k in ("UA", "IRA", "CRA"))]
                  for n, e in recipe.concepts.items() if e.scores]  # fmt: skip
    s = recipe.sampling
    sections = [
        recipe.description or "An erasure recipe for saeuron.",
        f"**Base model:** `{recipe.base_model.id}`. **Sampling behind the scores:** "
        f"{s.num_inference_steps} steps, guidance {s.guidance_scale:g}.",
        "## Edits\n\n" + table(
            ["concept", "hookpoint", "site", "rule", "strength", "anchors", "window", "rows"],
            rows),
    ]  # fmt: skip
    if score_rows:
        scores = table(["concept", "UA", "IRA", "CRA"], score_rows)
        sections.append("## Measured scores\n\n" + scores + (f"\n\n{note}" if note else ""))
    sections.append(
        "Load it with `saeuron.SAeUron(recipe=\"<this repo>\")` or `saeuron generate --recipe`."
    )
    meta = card_metadata(None, base_model=recipe.base_model.id, tags=["erasure-recipe"])
    return render_card(meta, "saeuron erasure recipe", sections)


__all__ = [
    "FEATURES_SUFFIXES",
    "FORMAT_VERSION",
    "IDENTITY_STRENGTH",
    "AnchorRef",
    "ConceptRecipe",
    "Edit",
    "FeaturesRef",
    "Recipe",
    "SaeRef",
    "copy_features",
    "file_sha256",
    "is_recipe_path",
    "module_fingerprint",
    "recipe_card",
    "resolve_anchors",
]
