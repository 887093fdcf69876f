"""The search space of ``saeuron tune``: a trial's setting (sites, rule, strengths, latents
per step, filter, anchor, window, CFG rows), every setting of a grid, and the recipe a
setting makes (features selected from the statistics at each site)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, NamedTuple

from saeuron.erasure.concepts.select import select_contrastive
from saeuron.erasure.concepts.stats import ConceptStats
from saeuron.erasure.features import SAE_FINGERPRINT
from saeuron.erasure.recipe import (
    AnchorRef,
    BaseModelRef,
    ConceptRecipe,
    Edit,
    FeaturesRef,
    Recipe,
    SaeRef,
    SamplingRef,
    file_sha256,
)
from saeuron.erasure.recipe_erasure import pipeline_fingerprint
from saeuron.eval.tune_config import SITE_JOIN, TuneConfig
from saeuron.eval.tuning_inputs import TuneInputs
from saeuron.models.prompt_encoders import prompt_encoder_of
from saeuron.sae import Sae

STRENGTH_RANGES = {
    # (text-encoder sites, denoiser sites): where each rule's useful strengths lie.
    "ablate": ((-1.5, 0.5), (-30.0, 0.0)),
    "anchor": ((-1.5, 0.5), (-30.0, 0.0)),
    "project": ((-1.5, 0.5), (-10.0, 0.0)),
    "scale": ((-100.0, -0.5), (-100.0, -0.5)),
}


# -- settings and recipes ---------------------------------------------------------------------


class RecipeMaker:
    """Turns a trial's setting into a recipe, selecting (and caching) features per site."""

    def __init__(self, inputs: TuneInputs, concept: str, features_dir: Path):
        self.inputs = inputs
        self.concept = concept
        self.kind = inputs.prompt_set.kind_of(concept)
        self.features_dir = features_dir
        self._stats: dict[tuple[str, str], ConceptStats] = {}
        self._saes: dict[str, Sae] = {}

    def sae(self, hookpoint: str) -> Sae:
        if hookpoint not in self._saes:
            self._saes[hookpoint] = Sae.from_pretrained(self.inputs.saes, hookpoint=hookpoint)
        return self._saes[hookpoint]

    def stats(self, hookpoint: str, concept: str) -> ConceptStats:
        key = (hookpoint, concept)
        if key not in self._stats:
            self._stats[key] = ConceptStats.load(self.inputs.stats / hookpoint / concept)
        return self._stats[key]

    def features_ref(
        self, concept: str, hookpoint: str, tau: int, ratio: float | None
    ) -> FeaturesRef:
        """``concept``'s latents against the rest of its kind at ``hookpoint`` (written once)."""
        tag = f"t{tau}-r{'none' if ratio is None else round(ratio * 100)}"
        relative = f"{hookpoint}/{concept}-{tag}"
        path = self.features_dir / relative
        selection = {"method": "contrastive", "tau": tau, "max_other_ratio": ratio,
                     "contrast": self.kind}  # fmt: skip
        if not path.with_name(path.name + ".json").is_file():
            others = [self.stats(hookpoint, c) for c in self.inputs.prompt_set.kinds[self.kind]
                      if c != concept]  # fmt: skip
            features = select_contrastive(self.stats(hookpoint, concept), others, tau=tau,
                                          max_other_ratio=ratio)  # fmt: skip
            features.concept = concept
            features.meta.update(hookpoint=hookpoint, selection=selection)
            features.meta[SAE_FINGERPRINT] = self.sae(hookpoint).fingerprint()
            path.parent.mkdir(parents=True, exist_ok=True)
            features.save(path)
        sha = file_sha256(path.with_name(path.name + ".safetensors"))
        return FeaturesRef(path=str(path), sha256=sha, selection=selection)

    def edits(self, setting: dict[str, Any]) -> list[Edit]:
        rule = setting["rule"]
        tau, ratio = int(setting["tau"]), setting.get("max_other_ratio")
        members = [c for c in self.inputs.prompt_set.kinds[self.kind] if c != self.concept]
        edits = []
        for hookpoint in setting["sites"].split(SITE_JOIN):
            text = prompt_encoder_of(hookpoint) is not None
            sae = self.sae(hookpoint)
            anchors = []
            if rule == "anchor":
                first = setting["anchor"]
                # The anchor, then the others of the kind: what replaces it when it is erased.
                order = [first, *[c for c in members if c != first]][:4]
                anchors = [
                    AnchorRef(concept=c, features=self.features_ref(c, hookpoint, tau, ratio))
                    for c in order
                ]
            window = None if text or setting.get("window", "all") == "all" else [
                float(v) for v in setting["window"].split(":")
            ]  # fmt: skip
            site = sae.meta.get("activation_site", "output")
            strength = setting["strength_text" if text else "strength_denoiser"]
            halves = "cond" if site == "guidance" else setting.get("guidance_half", "cond")
            edits.append(Edit(
                hookpoint=hookpoint, activation_site=site,
                sae=SaeRef(path=str(self.inputs.saes.resolve()), fingerprint=sae.fingerprint()),
                features=self.features_ref(self.concept, hookpoint, tau, ratio),
                rule=rule, strength=float(strength), window=window, guidance_half=halves,
                anchors=anchors,
            ))  # fmt: skip
        return edits

    def recipe(self, setting: dict[str, Any], scores: dict[str, float] | None = None) -> Recipe:
        edits = self.edits(setting)
        hookpoints = sorted({e.hookpoint for e in edits})
        return Recipe(
            base_model=BaseModelRef(
                id=self.inputs.model,
                fingerprint=pipeline_fingerprint(self.inputs.pipe, hookpoints),
            ),
            sampling=SamplingRef(num_inference_steps=self.inputs.steps,
                                 guidance_scale=self.inputs.guidance),  # fmt: skip
            concepts={self.concept: ConceptRecipe(kind=self.kind, edits=edits,
                                                  scores=scores or {})},  # fmt: skip
        )


class Axis(NamedTuple):
    """One choice of a setting: its key, the study's parameter name, and its values (a
    float in ``span`` where ``choices`` is None)."""

    key: str
    param: str
    choices: list[Any] | None
    span: tuple[float, float] | None = None


def anchor_candidates(inputs: TuneInputs, concept: str) -> list[str]:
    """The concepts of ``concept``'s kind an ``anchor`` edit may redirect it to."""
    kind = inputs.prompt_set.kind_of(concept)
    return [c for c in inputs.prompt_set.kinds[kind] if c != concept]


def rules_for(cfg: TuneConfig, inputs: TuneInputs, concept: str) -> list[str]:
    """The rules searched for ``concept`` (``anchor`` only with a concept to anchor to)."""
    return [r for r in cfg.rules if r != "anchor" or anchor_candidates(inputs, concept)]


def setting_axes(
    cfg: TuneConfig, inputs: TuneInputs, concept: str, sites: str, rule: str
) -> list[Axis]:
    """The rest of a setting once its sites and rule are chosen (conditional: strengths per
    kind of site, the window and rows for a denoiser site, an anchor for ``anchor``), in
    the order a trial asks for them: a sampler draws in that order, so it is part of what
    a study reproduces."""
    hookpoints = sites.split(SITE_JOIN)
    text_span, denoiser_span = STRENGTH_RANGES[rule]
    strengths = list(cfg.strengths) if cfg.strengths else None
    axes = []
    if any(prompt_encoder_of(h) for h in hookpoints):
        axes.append(Axis("strength_text", f"strength_text_{rule}", strengths, text_span))
    if not all(prompt_encoder_of(h) for h in hookpoints):
        axes += [
            Axis("strength_denoiser", f"strength_denoiser_{rule}", strengths, denoiser_span),
            Axis("window", "window", list(cfg.windows)),
            Axis("guidance_half", "guidance_half", list(cfg.halves)),
        ]
    axes += [Axis("tau", "tau", list(cfg.taus)),
             Axis("max_other_ratio", "max_other_ratio", list(cfg.ratios))]  # fmt: skip
    if rule == "anchor":
        axes.append(Axis("anchor", "anchor", anchor_candidates(inputs, concept)))
    return axes


def suggest_setting(
    trial: Any, cfg: TuneConfig, inputs: TuneInputs, concept: str
) -> dict[str, Any]:
    """One point of the search space, asked of an Optuna trial."""
    sites = trial.suggest_categorical("sites", inputs.site_sets)
    rule = trial.suggest_categorical("rule", rules_for(cfg, inputs, concept))
    setting: dict[str, Any] = {"sites": sites, "rule": rule}
    for axis in setting_axes(cfg, inputs, concept, sites, rule):
        if axis.choices is None:
            assert axis.span is not None
            setting[axis.key] = float(trial.suggest_float(axis.param, *axis.span))
        else:
            value = trial.suggest_categorical(axis.param, axis.choices)
            setting[axis.key] = float(value) if axis.span is not None else value
    return setting


def grid_settings(cfg: TuneConfig, inputs: TuneInputs, concept: str) -> list[dict[str, Any]]:
    """Every point of the search space once, with ``cfg.strengths`` as the strengths: the
    settings :func:`suggest_setting` can return, in a fixed order (the ``grid`` sampler)."""
    settings: list[dict[str, Any]] = []
    for sites in inputs.site_sets:
        for rule in rules_for(cfg, inputs, concept):
            axes = setting_axes(cfg, inputs, concept, sites, rule)
            for values in itertools.product(*(axis.choices or [] for axis in axes)):
                setting = {"sites": sites, "rule": rule}
                setting.update({axis.key: v for axis, v in zip(axes, values, strict=True)})
                settings.append(setting)
    return settings


def enqueued_params(setting: dict[str, Any]) -> dict[str, Any]:
    """A setting (as :func:`suggest_setting` returns it, with plain ``strength_text`` /
    ``strength_denoiser``) as the study's parameter names."""
    params = dict(setting)
    rule = params.get("rule", "ablate")
    for key in ("strength_text", "strength_denoiser"):
        if key in params:
            params[f"{key}_{rule}"] = params.pop(key)
    return params
