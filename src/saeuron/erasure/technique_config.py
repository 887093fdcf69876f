"""The settings of the SAeUron technique (:class:`SAeUronConfig`), in a module without
torch, so that ``saeuron generate --help`` reads them without loading a model;
:mod:`saeuron.erasure.technique` re-exports them."""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any

from saeuron.erasure.edit_parts import (
    EraseConcept,
    ErrorTerm,
    GuidanceHalf,
    Hookpoint,
    RecipeRef,
    Rule,
    SaeName,
    Strength,
    Window,
)
from saeuron.erasure.erase_config import EraseConfig
from saeuron.models.bundle_lookup import bundle_names
from saeuron.models.defaults import KNOWN_MODELS, model_defaults, resolve_sae
from saeuron.models.model_part import ModelKey
from saeuron.models.resolve import ResolvesModel, resolve_model
from saeuron.models.sampling_config import SamplingConfig
from saeuron.utils.config import Config, ConfigError, field, refuse_null

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
FEATURE_METHODS = ("shortcut", "contrastive")
DEFAULT_MULTIPLIER = -20.0
"""SAeUron's default strength, for concepts whose features carry no tuned one."""
CONCEPT_SEPARATOR = ","
PRESETS = ("recipe", "paper")
"""``recipe``: a bundled model's tuned recipe for each concept that has one; ``paper``: the
published SAeUron method (one block, the ``scale`` rule, the bundle's tuned gamma)."""


def split_concepts(text: str) -> list[str]:
    """``"moon, checkered"`` -> ``["moon", "checkered"]``."""
    return [c.strip() for c in text.split(CONCEPT_SEPARATOR) if c.strip()]


@dataclass
class SAeUronConfig(ResolvesModel, Config):
    concept: EraseConcept = field(
        EraseConcept,
        flatten=True,
        help="what is erased",
        describe={
            "erase_concept": "the concept to suppress, any phrase; several: comma-separated "
            "('moon,checkered'); default: every concept of --recipe, else 'nudity'"
        },
    )
    recipe_ref: RecipeRef = field(
        RecipeRef, flatten=True, help="the recipe",
        describe={"recipe": "an erasure recipe (file, folder with recipe.json, or hub id): "
                  "erase its concepts with its edits, sites and strengths"},
    )  # fmt: skip
    preset: str = field(
        "recipe",
        choices=PRESETS,
        help="'recipe': on a bundled model, each concept's tuned recipe when the bundle has "
        "one and no SAE, hookpoint, features, multiplier, rule or window is named; 'paper': "
        "the published SAeUron method",
    )
    strength: Strength = field(
        Strength,
        flatten=True,
        help="gamma",
        describe={
            "multiplier": "gamma, the scale of the concept's latents: negative suppresses, "
            "positive amplifies; default: the tuned value of a bundled concept, else "
            f"{DEFAULT_MULTIPLIER}"
        },
    )
    model_name: ModelKey = field(
        ModelKey(model=DEFAULT_MODEL),
        flatten=True,
        help="the model",
        describe={"model": "model id, local folder, or a bundled name"},
    )
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")
    sae_name: SaeName = field(
        SaeName,
        flatten=True,
        help="the SAE",
        describe={
            "sae": "SAE repo id, folder or bundled name; default: the known SAE of the model"
        },
    )
    block: Hookpoint = field(
        Hookpoint,
        flatten=True,
        help="where it edits",
        describe={
            "hookpoint": "module the SAE reads; default: where the bundle keeps the concept, "
            "else the model's known one"
        },
    )
    features: str | None = field(
        None, help="precomputed concept features (NAME.safetensors + NAME.json) to use"
    )
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows edited",
        describe={"guidance_half": "'cond' edits the conditional half; 'both' every row"},
    )
    errors: ErrorTerm = field(
        ErrorTerm,
        flatten=True,
        help="the error term",
        describe={"error_term": "'exact' (identity when nothing is edited) or 'paper'"},
    )
    edit_rule: Rule = field(
        Rule,
        flatten=True,
        help="the edit rule",
        describe={
            "rule": "how a concept's latents are edited: 'scale' (published: a <- "
            "gamma*mu*a), 'ablate' (a <- r + gamma*(a - r), r its mean on other concepts), "
            "'anchor', 'project'"
        },
    )
    schedule: Window = field(
        Window,
        flatten=True,
        help="the steps edited",
        describe={
            "window": "edit only at schedule positions START,END (0 = first step, 1 = last); "
            "default: every step"
        },
    )
    feature_method: str = field(
        "shortcut",
        choices=FEATURE_METHODS,
        help="how features of a new concept are found: 'shortcut' (20 images, step 10) or "
        "'contrastive' (scores against neutral prompts at every step)",
    )
    num_features: int | None = field(
        None,
        ge=1,
        le=100_000,
        help="latents per step kept for a new concept; default: 10 (shortcut), the "
        "percentile's 1 (contrastive), as `saeuron concept build`",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "model")
        # The model (and a named SAE) looked up here, once: every check and step below reads
        # ``resolved_model``, never the name again.
        self._resolve_model()
        self._sae = resolve_model(self.sae, "sae") if self.sae is not None else None
        if self._sae is not None:
            self.sae = self._sae.name
        if self.erase_concept is None and self.recipe is None:
            self.erase_concept = "nudity"
        if self.erase_concept is None:
            self.sampling = self.sampling.resolved(self._model)
            return
        concepts = split_concepts(self.erase_concept) if isinstance(self.erase_concept, str) else []
        if not concepts:
            raise ConfigError("erase_concept", "must be a non-empty string")
        if len({c.lower() for c in concepts}) != len(concepts):
            raise ConfigError("erase_concept", f"got {self.erase_concept!r}; each concept once")
        if self.features is not None and len(concepts) > 1:
            raise ConfigError(
                "features", "one features file serves one concept; erase one concept with it"
            )
        if self.multiplier is not None and self.multiplier == 0 and self.rule == "scale":
            raise ConfigError(
                "multiplier",
                "must not be 0 with rule 'scale' (negative suppresses the concept, positive "
                "amplifies it); 0 is full ablation with the other rules",
            )
        # The rule, error term and rows are an erasure's settings: checked as erase() checks
        # them, so the API, the CLI and JSON refuse the same combinations.
        EraseConfig(rows=self.rows, errors=self.errors, edit_rule=self.edit_rule)
        self.sampling = self.sampling.resolved(self._model)
        if self.guidance_half == "cond" and not self.sampling.guidance > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {self.sampling.guidance}; must be > 1.0: SAeUron edits the conditional "
                "half of the CFG batch. For models sampled without CFG (SDXL-Turbo) set "
                "guidance_half='both', which edits the whole batch",
            )
        if self.recipe is not None:
            return
        if self.sae is None and model_defaults(self._model).sae is None:
            raise ConfigError(
                "sae",
                f"no published SAE is known for model {self.model!r}; name one with sae=... "
                f"and hookpoint=... (known models: {', '.join(sorted(_served_models()))})",
            )

    def replace(self, **changes: Any) -> SAeUronConfig:
        """A copy with ``changes``, checked like a new config. Built from the fields rather
        than a dict so that the model and SAE looked up for this config are kept, not looked
        up again (per-call sampling overrides in ``generate`` come here); flattened sampling
        keys are converted and checked by the sampling config's own ``replace``."""
        # Each nested part copied: the copy's keys are written (a recipe's concepts named in
        # it) without touching this config.
        data: dict[str, Any] = {
            f.name: copy.copy(value) if isinstance(value, Config) else value
            for f in fields(self)
            if f.init
            for value in (getattr(self, f.name),)
        }
        data["model"] = self._model
        if self._sae is not None:
            data["sae"] = self._sae
        data.update(changes)
        return type(self)(**data)

    @property
    def concepts(self) -> list[str]:
        """The concepts to erase, in the order given (none named: every one of the recipe)."""
        return split_concepts(self.erase_concept) if self.erase_concept else []

    def uses_paper_settings(self) -> bool:
        """Whether a setting of the published method is named (then no bundled recipe)."""
        return (
            self.preset == "paper" or self.sae is not None or self.hookpoint is not None
            or self.features is not None or self.multiplier is not None
            or self.rule != "scale" or self.window is not None
        )  # fmt: skip

    def resolved_sae(self, concept: str | None = None) -> tuple[str, str | None]:
        """The SAE and hookpoint ``concept`` (default: the first) is erased with, without
        loading anything."""
        sae, hookpoint = resolve_sae(
            self._model, self._sae, self.hookpoint, concept or self.concepts[0]
        )
        assert sae is not None  # checked in __post_init__
        return sae, hookpoint


def _served_models() -> list[str]:
    return [m for m, d in KNOWN_MODELS.items() if d.sae] + bundle_names()
