"""What ``saeuron eval`` measures: techniques by name, each built from its config.

A technique answers ``generate(prompts, seeds=...) -> list[PIL.Image]`` where image i depends
on ``prompts[i]`` and ``seeds[i]`` only, so a resumed run regenerates exactly what it lost.
``unerased(prompts, seeds)`` gives the same model's images without the erasure (the
reference of the ``preservation`` metric).

- ``saeuron``: the core technique (:class:`saeuron.erasure.technique.SAeUron`), with
  eval-unlearn's config.
- ``none``: the model unchanged.
- ``negative_prompt``: the concept as the negative prompt of classifier-free guidance.
- ``saemnesia``: SAEmnesia (docs/method.md, section 6): a supervised SAE, the concept is its one
  latent, only the multiplier is tuned.

A recipe (``recipe: FILE``, or a bundled model's recipes by default) goes through
``saeuron``: its config takes every key of :class:`~saeuron.erasure.technique.SAeUronConfig`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from saeuron.erasure.edit_parts import (
    EraseConcept,
    ErrorTerm,
    GuidanceHalf,
    Hookpoint,
    Percentile,
    SaeName,
    StatsRef,
    Strength,
)
from saeuron.erasure.preflight import check_erasure
from saeuron.erasure.technique import DEFAULT_MODEL, SAeUron, SAeUronConfig, check_technique
from saeuron.eval.saemnesia_published import (
    published_features,
    read_params,
    stats_hookpoint,
    stats_names,
)
from saeuron.models.layout import check_model_inputs
from saeuron.models.model_part import ModelKey
from saeuron.models.pipelines import check_model, load_pipeline
from saeuron.models.resolve import ResolvedModel, ResolvesModel, resolve_model
from saeuron.models.sampling import SamplingConfig, seed_generators, use_scheduler
from saeuron.utils.config import Config, ConfigError, field, refuse_null
from saeuron.utils.devices import resolve_device
from saeuron.utils.files import SUPERVISED_FEATURES_DIR
from saeuron.utils.hub import snapshot
from saeuron.utils.plugins import is_plugin, load_plugin
from saeuron.utils.registry import Registry

logger = logging.getLogger(__name__)


class Technique(Protocol):
    config: Config
    pipe: Any
    """The diffusers pipeline it samples with (white-box attacks read its text encoder)."""

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]: ...

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]: ...

    def erase(self) -> contextlib.AbstractContextManager[Any]:
        """What the technique does to ``pipe``'s UNet, for calls made by hand (P4D)."""
        ...


@dataclass(frozen=True)
class TechniqueEntry:
    config: type[Config]
    build: Any
    """``build(config) -> Technique``; called only when images are needed."""
    help: str


TECHNIQUES: Registry[TechniqueEntry] = Registry("technique")


@dataclass
class PlainConfig(ResolvesModel, Config):
    """The model as it is, or with the concept as negative prompt."""

    concept: EraseConcept = field(
        EraseConcept,
        flatten=True,
        help="the concept",
        describe={
            "erase_concept": "the concept (the negative prompt; the metrics' default concept)"
        },
    )
    model_name: ModelKey = field(
        ModelKey(model=DEFAULT_MODEL),
        flatten=True,
        help="the model",
        describe={"model": "model id, local folder, or a bundled name"},
    )
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "model")
        if self.erase_concept is not None and not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string when given")
        self.sampling = self.sampling.resolved(self._resolve_model())


@dataclass
class NegativePromptConfig(PlainConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.erase_concept is None:
            raise ConfigError("erase_concept", "the negative_prompt technique needs the concept")
        if not self.sampling.guidance > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {self.sampling.guidance}; must be > 1.0: a negative prompt acts through CFG",
            )


class PlainTechnique:
    """Samples the stock pipeline, with an optional negative prompt."""

    def __init__(self, config: PlainConfig, negative: str | None = None):
        self.config = config
        device = config.sampling.torch_device()
        self.pipe = load_pipeline(
            config.resolved_model, device=device, dtype=config.sampling.dtype_for(device)
        )
        use_scheduler(self.pipe, config.sampling.scheduler)
        self.negative = negative

    def _sample(self, prompts: list[str], seeds: list[int], negative: str | None) -> list[Any]:
        sampling = self.config.sampling
        images: list[Any] = []
        for start in range(0, len(prompts), sampling.batch_size):
            batch = prompts[start : start + sampling.batch_size]
            images += self.pipe(
                batch,
                negative_prompt=[negative] * len(batch) if negative else None,
                generator=seed_generators(seeds[start : start + len(batch)]),
                **sampling.call_kwargs(),
            ).images
        return images

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, self.negative)

    def erase(self) -> contextlib.AbstractContextManager[Any]:
        # The UNet is unchanged; a negative prompt acts through ``negative`` in CFG.
        return contextlib.nullcontext()

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, None)


class SAeUronTechnique:
    """The core technique behind the evaluation interface."""

    def __init__(self, config: SAeUronConfig):
        self.config = config
        self.tech = SAeUron.from_config(config)
        self.pipe = self.tech.pipe

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self.tech.generate(prompts, seeds=seeds)

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self.tech.generate(prompts, seeds=seeds, erase_concept=False)

    def erase(self) -> contextlib.AbstractContextManager[Any]:
        return self.tech.erase()


TECHNIQUES.register("saeuron")(
    TechniqueEntry(SAeUronConfig, SAeUronTechnique, "SAeUron: ablate the concept's SAE latents")
)
TECHNIQUES.register("none")(
    TechniqueEntry(PlainConfig, PlainTechnique, "the model unchanged (the baseline)")
)
TECHNIQUES.register("negative_prompt")(
    TechniqueEntry(
        NegativePromptConfig,
        lambda cfg: PlainTechnique(cfg, negative=cfg.erase_concept),
        "the concept as the negative prompt of classifier-free guidance",
    )
)


@dataclass
class SAEmnesiaConfig(ResolvesModel, Config):
    """A supervised SAE (``saeuron train --supervised``): OUT/<hookpoint>/features/<concept>."""

    concept: EraseConcept = field(
        EraseConcept,
        flatten=True,
        help="the concept",
        required=("erase_concept",),
        describe={"erase_concept": "one of the supervised SAE's concepts"},
    )
    model_name: ModelKey = field(
        ModelKey(model=DEFAULT_MODEL),
        flatten=True,
        help="the model",
        describe={"model": "model id, local folder, or a bundled name"},
    )
    sae_name: SaeName = field(
        SaeName,
        flatten=True,
        help="the supervised SAE",
        describe={
            "sae": "supervised SAE folder or hub repo (one sub-folder per hookpoint); "
            "default: the bundled model's supervised SAE"
        },
    )
    block: Hookpoint = field(
        Hookpoint,
        flatten=True,
        help="where it edits",
        describe={"hookpoint": "module the SAE reads; default: the bundled one"},
    )
    strength: Strength = field(
        Strength,
        flatten=True,
        help="gamma",
        describe={
            "multiplier": "gamma, the only knob; default: the concept's tuned value, else -20"
        },
    )
    stats_ref: StatsRef = field(
        StatsRef, flatten=True, help="the statistics",
        describe={"stats": "per-class statistics converted from SAEmnesia's cls_latents_dict "
                  "(saeuron convert stats): the concept's latents are then picked per step as "
                  "SAEmnesia's inference picks them, from the published SAE (sae=...)"},
    )  # fmt: skip
    kept_percentile: Percentile = field(
        Percentile,
        flatten=True,
        help="latents kept by score",
        describe={
            "percentile": "with stats: keep latents above this percentile of the step's "
            "scores; default: the class's in params, else 99.999 (one latent per step)"
        },
    )
    params: str | None = field(
        None,
        help="with stats: per-class percentile and multiplier as JSON (saeuron convert "
        "params of SAEmnesia's class_params.pth)",
    )
    sampling: SamplingConfig = field(SamplingConfig, flatten=True, help="how images are sampled")
    rows: GuidanceHalf = field(
        GuidanceHalf,
        flatten=True,
        help="the rows edited",
        describe={
            "guidance_half": "'cond' edits the conditional half; 'both' every row (SAEmnesia's "
            "code)"
        },
    )
    errors: ErrorTerm = field(
        ErrorTerm,
        flatten=True,
        help="the error term",
        describe={
            "error_term": "'exact' (identity when nothing is edited) or 'paper' (SAEmnesia's "
            "code)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_null(self, "model")
        if not self.erase_concept or not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string")
        self.erase_concept = self.erase_concept.strip().lower()
        bundle = self._resolve_model().bundle
        # The SAE, looked up once like the model: a bundle's supervised folder is one already.
        self._sae = resolve_model(self.sae, "sae") if self.sae is not None else None
        if self.stats is not None:
            self._check_published_stats()
        elif bundle is not None and bundle.supervised_folder is not None and self.sae is None:
            if bundle.concept(self.erase_concept) is None:
                kinds = "; ".join(f"{k}s: {', '.join(v)}" for k, v in bundle.kinds().items())
                raise ConfigError(
                    "erase_concept", f"got {self.erase_concept!r}; {bundle.name} knows {kinds}"
                )
            self.hookpoint = self.hookpoint or bundle.hookpoint_for(self.erase_concept)
            self.sae = str(bundle.supervised_folder)
            self._sae = ResolvedModel(self.sae)
        if self.sae is None or self.hookpoint is None:
            raise ConfigError(
                "sae", "name the supervised SAE (sae=...) and its hookpoint (hookpoint=...); "
                "only bundled models have a default"
            )
        folder = Path(self.sae) / self.hookpoint
        if folder.is_dir() and self.stats is None:
            names = sorted(p.stem for p in (folder / SUPERVISED_FEATURES_DIR).glob("*.json"))
            if self.erase_concept not in names:
                raise ConfigError(
                    "erase_concept", f"got {self.erase_concept!r}; the supervised SAE at "
                    f"{folder} knows: {', '.join(names) or 'none (not a supervised SAE)'}"
                )
        # The rest (steps, CFG half against the scale, device) as the core technique checks it.
        self.saeuron_config()

    def _check_published_stats(self) -> None:
        names = stats_names(str(self.stats))
        match = {n.lower(): n for n in names}.get(self.erase_concept)
        if match is None:
            raise ConfigError(
                "erase_concept",
                f"got {self.erase_concept!r}; the statistics at {self.stats} hold "
                f"{', '.join(names) or 'none'}",
            )
        if self.params is not None:
            read_params(self.params, match)
        if self.hookpoint is None:  # where the statistics were read, if convert was told
            self.hookpoint = stats_hookpoint(str(self.stats), names[match])

    def saeuron_config(self) -> SAeUronConfig:
        features = None
        if self.stats is None and Path(self.sae or "").is_dir():
            features = str(
                Path(str(self.sae)) / str(self.hookpoint) / SUPERVISED_FEATURES_DIR
                / self.erase_concept
            )
        return SAeUronConfig(
            erase_concept=self.erase_concept, multiplier=self.multiplier,
            model=self.resolved_model, sampling=self.sampling, sae=self._sae,
            hookpoint=self.hookpoint, features=features,
            guidance_half=self.guidance_half, error_term=self.error_term,
        )  # fmt: skip


def _saemnesia(config: SAEmnesiaConfig) -> SAeUronTechnique:
    cfg = config.saeuron_config()
    if config.stats is not None:
        features = published_features(
            str(config.stats), config.erase_concept, str(config.hookpoint), config.params,
            config.percentile,
        )  # fmt: skip
        # The core technique reads features from disk, once, while it is built.
        with tempfile.TemporaryDirectory(prefix="saemnesia-") as tmp:
            cfg.features = str(features.save(Path(tmp) / "features"))
            tech = SAeUronTechnique(cfg)
        tech.config = config
        return tech
    if cfg.features is None:
        # A hub repo: fetch the hookpoint's folder, whose features/ sit beside the SAE.
        folder = snapshot(
            str(config.sae), what="supervised SAE", allow_patterns=[f"{config.hookpoint}/*"]
        )
        cfg.features = str(
            folder / str(config.hookpoint) / SUPERVISED_FEATURES_DIR / config.erase_concept
        )
    tech = SAeUronTechnique(cfg)
    tech.config = config
    return tech


TECHNIQUES.register("saemnesia")(
    TechniqueEntry(
        SAEmnesiaConfig, _saemnesia, "SAEmnesia: a supervised SAE, one latent per concept"
    )
)


@dataclass
class PluginConfig(ResolvesModel, Config):
    """A ``module:Class`` technique: its class is built as ``Class(**options)``."""

    target: str = field(help="the technique's module:Class")
    concept: EraseConcept = field(
        EraseConcept,
        flatten=True,
        help="the concept",
        describe={"erase_concept": "the concept (the metrics' default)"},
    )
    # May be None, unlike the other configs' model: a plugin can load its own.
    model_name: ModelKey = field(
        ModelKey,
        flatten=True,
        help="the model",
        describe={"model": "the model it samples (informational)"},
    )
    options: dict[str, Any] = field({}, help="every key of the technique's config block")

    def __post_init__(self) -> None:
        super().__post_init__()
        # Informational, but the run's plan says whether it is available: looked up here.
        if self.model is not None:
            self._resolve_model()


def technique_entry(name: str) -> TechniqueEntry:
    """A registered technique, or a ``module:Class`` one (the caller decides whether it
    may be imported: see :func:`saeuron.utils.plugins.refuse_untrusted`)."""
    if not is_plugin(name):
        return TECHNIQUES.get(name)
    return TechniqueEntry(PluginConfig, _build_plugin, f"the plugin {name}")


def _build_plugin(config: PluginConfig) -> Technique:
    cls = load_plugin(config.target, "technique.name")
    technique = cls(**config.options)
    methods = ("generate", "unerased", "erase")
    needed = [m for m in methods if not callable(getattr(technique, m, None))]
    if needed or not hasattr(technique, "pipe"):
        raise ConfigError(
            "technique.name", f"{config.target} lacks {needed or ['pipe']}: a technique has pipe, "
            "generate(prompts, seeds), unerased(prompts, seeds) and erase()"
        )  # fmt: skip
    return technique


def technique_config(name: str, config: dict[str, Any]) -> Config:
    """The validated config of technique ``name`` (nothing is loaded)."""
    if is_plugin(name):
        # Imported now, so that a misspelt module fails the check, not the run.
        load_plugin(name, "technique.name")
        return PluginConfig(
            target=name, erase_concept=config.get("erase_concept"), model=config.get("model"),
            options=dict(config),
        )  # fmt: skip
    return TECHNIQUES.get(name).config.from_dict(config, where="technique.config")


def check_technique_config(config: Config) -> None:
    """What a technique needs (device, model, SAE, hookpoint, features, steps, size),
    checked from files and headers before anything loads."""
    if isinstance(config, SAEmnesiaConfig):
        if config.stats is not None:  # its features are made from the statistics at build
            check_erasure(config.resolved_model, config.sampling, str(config.sae), config.hookpoint)
            return
        config = config.saeuron_config()
    if isinstance(config, SAeUronConfig):
        check_technique(config)
        return
    sampling = getattr(config, "sampling", None)
    if isinstance(sampling, SamplingConfig) and isinstance(config, ResolvesModel):
        resolve_device(sampling.device)
        check_model(config.resolved_model)
        check_model_inputs(config.resolved_model, sampling)


def build_technique(name: str, config: Config) -> Technique:
    logger.info("building technique %s", name)
    return technique_entry(name).build(config)
