"""The search space of ``saeuron tune``: a trial's setting (sites, rule, strengths, latents
per step, filter, anchor, window, CFG rows), every setting of a grid, and the recipe a
setting makes (features selected from the statistics at each site)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

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


def suggest_setting(
    trial: Any, cfg: TuneConfig, inputs: TuneInputs, concept: str
) -> dict[str, Any]:
    """One point of the search space (conditional: an anchor only for ``anchor``, ...)."""
    kind = inputs.prompt_set.kind_of(concept)
    sites = trial.suggest_categorical("sites", inputs.site_sets)
    rules = [r for r in cfg.rules if r != "anchor" or len(inputs.prompt_set.kinds[kind]) > 1]
    rule = trial.suggest_categorical("rule", rules)
    text_range, denoiser_range = STRENGTH_RANGES[rule]
    setting: dict[str, Any] = {"sites": sites, "rule": rule}
    hookpoints = sites.split(SITE_JOIN)

    def strength(name: str, low_high: tuple[float, float]) -> float:
        if cfg.strengths:
            return float(trial.suggest_categorical(name, cfg.strengths))
        return float(trial.suggest_float(name, *low_high))

    if any(prompt_encoder_of(h) for h in hookpoints):
        setting["strength_text"] = strength(f"strength_text_{rule}", text_range)
    if not all(prompt_encoder_of(h) for h in hookpoints):
        setting["strength_denoiser"] = strength(f"strength_denoiser_{rule}", denoiser_range)
        setting["window"] = trial.suggest_categorical("window", cfg.windows)
        setting["guidance_half"] = trial.suggest_categorical("guidance_half", cfg.halves)
    setting["tau"] = trial.suggest_categorical("tau", cfg.taus)
    setting["max_other_ratio"] = trial.suggest_categorical("max_other_ratio", cfg.ratios)
    if rule == "anchor":
        others = [c for c in inputs.prompt_set.kinds[kind] if c != concept]
        setting["anchor"] = trial.suggest_categorical("anchor", others)
    return setting


def grid_settings(cfg: TuneConfig, inputs: TuneInputs, concept: str) -> list[dict[str, Any]]:
    """Every point of the search space once, with ``cfg.strengths`` as the strengths: the
    settings :func:`suggest_setting` can return, in a fixed order (the ``grid`` sampler)."""
    kind = inputs.prompt_set.kind_of(concept)
    others = [c for c in inputs.prompt_set.kinds[kind] if c != concept]
    rules = [r for r in cfg.rules if r != "anchor" or others]
    settings: list[dict[str, Any]] = []
    for sites in inputs.site_sets:
        hookpoints = sites.split(SITE_JOIN)
        text = any(prompt_encoder_of(h) for h in hookpoints)
        denoiser = not all(prompt_encoder_of(h) for h in hookpoints)
        for rule in rules:
            axes: list[tuple[str, list[Any]]] = []
            if text:
                axes.append(("strength_text", list(cfg.strengths)))
            if denoiser:
                axes += [("strength_denoiser", list(cfg.strengths)),
                         ("window", list(cfg.windows)), ("guidance_half", list(cfg.halves))]
            axes += [("tau", list(cfg.taus)), ("max_other_ratio", list(cfg.ratios))]
            if rule == "anchor":
                axes.append(("anchor", others))
            for values in itertools.product(*(v for _, v in axes)):
                setting = {"sites": sites, "rule": rule}
                setting.update({k: v for (k, _), v in zip(axes, values, strict=True)})
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
