"""What ``saeuron eval`` measures: techniques by name, each built from its config.

A technique answers ``generate(prompts, seeds=...) -> list[PIL.Image]`` where image i depends
on ``prompts[i]`` and ``seeds[i]`` only, so a resumed run regenerates exactly what it lost.
``unerased(prompts, seeds)`` gives the same model's images without the erasure (the
reference of the ``preservation`` metric).

- ``saeuron``: the core technique (:class:`saeuron.technique.SAeUron`), seed 000's config.
- ``none``: the model unchanged.
- ``negative_prompt``: the concept as the negative prompt of classifier-free guidance.
- ``saemnesia``: SAEmnesia (method.md section 6): a supervised SAE, the concept is its one
  latent, only the multiplier is tuned.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..config import Config, ConfigError, check_device, check_range, field
from ..registry import Registry
from ..technique import DEFAULT_MODEL, SAeUronConfig

logger = logging.getLogger(__name__)


class Technique(Protocol):
    config: Config
    pipe: Any
    """The diffusers pipeline it samples with (white-box attacks read its text encoder)."""

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]: ...

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]: ...

    def erasing(self) -> contextlib.AbstractContextManager[Any]:
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
class PlainConfig(Config):
    """The model as it is, or with the concept as negative prompt."""

    erase_concept: str | None = field(
        None, help="the concept (the negative prompt; the metrics' default concept)"
    )
    model: str = field(DEFAULT_MODEL, help="model id, local folder, or a bundled name")
    num_inference_steps: int = field(50, help="denoising steps")
    guidance_scale: float = field(7.5, help="CFG scale")
    use_fp16: bool = field(True, help="half precision where the device supports it")
    device: str | None = field(None, help="cpu, cuda, cuda:N or mps; default: best available")
    batch_size: int = field(4, help="prompts per pipeline call")
    height: int | None = field(None, help="image height; default: the model's")
    width: int | None = field(None, help="image width; default: the model's")

    def __post_init__(self) -> None:
        if self.erase_concept is not None and not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string when given")
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_range("guidance_scale", self.guidance_scale, ge=0)
        check_device("device", self.device)
        check_range("batch_size", self.batch_size, ge=1)


@dataclass
class NegativePromptConfig(PlainConfig):
    def __post_init__(self) -> None:
        super().__post_init__()
        if self.erase_concept is None:
            raise ConfigError("erase_concept", "the negative_prompt technique needs the concept")
        if not self.guidance_scale > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {self.guidance_scale}; must be > 1.0: a negative prompt acts through CFG",
            )


def _generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


class PlainTechnique:
    """Samples the stock pipeline, with an optional negative prompt."""

    def __init__(self, config: PlainConfig, negative: str | None = None):
        from ..pipelines import load_pipeline, resolve_device

        self.config = config
        device = resolve_device(config.device)
        half = config.use_fp16 and device.type in ("cuda", "mps")
        self.pipe = load_pipeline(
            config.model, device=str(device), dtype=torch.float16 if half else torch.float32
        )
        self.negative = negative

    def _sample(self, prompts: list[str], seeds: list[int], negative: str | None) -> list[Any]:
        cfg = self.config
        images: list[Any] = []
        for start in range(0, len(prompts), cfg.batch_size):
            batch = prompts[start : start + cfg.batch_size]
            images += self.pipe(
                batch,
                negative_prompt=[negative] * len(batch) if negative else None,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                generator=_generators(seeds[start : start + len(batch)]),
                height=cfg.height,
                width=cfg.width,
            ).images
        return images

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, self.negative)

    def erasing(self) -> contextlib.AbstractContextManager[Any]:
        # The UNet is unchanged; a negative prompt acts through ``negative`` in CFG.
        return contextlib.nullcontext()

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self._sample(prompts, seeds, None)


class SAeUronTechnique:
    """The core technique behind the evaluation interface."""

    def __init__(self, config: SAeUronConfig):
        from ..technique import SAeUron

        self.config = config
        self.tech = SAeUron(**config.to_dict())
        self.pipe = self.tech.pipe

    def generate(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self.tech.generate(prompts, seeds=seeds)

    def unerased(self, prompts: list[str], seeds: list[int]) -> list[Any]:
        return self.tech.generate(prompts, seeds=seeds, erase_concept=False)

    def erasing(self) -> contextlib.AbstractContextManager[Any]:
        return self.tech.erasing()


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
class SAEmnesiaConfig(Config):
    """A supervised SAE (``saeuron train --supervised``): OUT/<hookpoint>/features/<concept>."""

    erase_concept: str = field(help="one of the supervised SAE's concepts")
    model: str = field(DEFAULT_MODEL, help="model id, local folder, or a bundled name")
    sae: str | None = field(
        None, help="supervised SAE folder or hub repo (one sub-folder per hookpoint); "
        "default: the bundled model's supervised SAE"
    )
    hookpoint: str | None = field(None, help="module the SAE reads; default: the bundled one")
    multiplier: float | None = field(
        None, help="gamma, the only knob; default: the concept's tuned value, else -20"
    )
    stats: str | None = field(
        None,
        help="per-class statistics converted from SAEmnesia's cls_latents_dict (saeuron "
        "convert stats): the concept's latents are then picked per step as SAEmnesia's "
        "inference picks them, from the published SAE (sae=...)",
    )
    percentile: float | None = field(
        None, help="with stats: keep latents above this percentile of the step's scores; "
        "default: the class's in params, else 99.999 (one latent per step)"
    )  # fmt: skip
    params: str | None = field(
        None, help="with stats: per-class percentile and multiplier as JSON (saeuron convert "
        "params of SAEmnesia's class_params.pth)"
    )  # fmt: skip
    num_inference_steps: int = field(50, help="denoising steps (DDIM)")
    guidance_scale: float = field(7.5, help="CFG scale; must be > 1 when cfg_half is 'cond'")
    cfg_half: str = field(
        "cond", help="'cond' edits the conditional half; 'both' every row (SAEmnesia's code)"
    )
    error_term: str = field(
        "exact", help="'exact' (identity when nothing is edited) or 'paper' (SAEmnesia's code)"
    )
    use_fp16: bool = field(True, help="half precision where the device supports it")
    device: str | None = field(None, help="cpu, cuda, cuda:N or mps; default: best available")
    batch_size: int = field(4, help="prompts per pipeline call")
    height: int | None = field(None, help="image height; default: the model's")
    width: int | None = field(None, help="image width; default: the model's")

    def __post_init__(self) -> None:
        from pathlib import Path

        from ..pipelines import BUNDLED_MODELS

        if not self.erase_concept or not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string")
        self.erase_concept = self.erase_concept.strip().lower()
        if self.stats is not None:
            self._check_published_stats()
        elif self.model == "minicanvas":
            from ..minicanvas.assets import concept_hookpoint, concept_kind

            concept_kind(self.erase_concept)  # names the 20 concepts when it is not one
            self.hookpoint = self.hookpoint or concept_hookpoint(self.erase_concept)
            self.sae = self.sae or str(BUNDLED_MODELS["minicanvas"] / "supervised" / "saes")
        if self.sae is None or self.hookpoint is None:
            raise ConfigError(
                "sae", "name the supervised SAE (sae=...) and its hookpoint (hookpoint=...); "
                "only the bundled minicanvas has a default"
            )
        folder = Path(self.sae) / self.hookpoint
        if folder.is_dir() and self.stats is None:
            names = sorted(p.stem for p in (folder / "features").glob("*.json"))
            if self.erase_concept not in names:
                raise ConfigError(
                    "erase_concept", f"got {self.erase_concept!r}; the supervised SAE at "
                    f"{folder} knows: {', '.join(names) or 'none (not a supervised SAE)'}"
                )
        # The rest (steps, CFG half against the scale, device) as the core technique checks it.
        self.saeuron_config()

    def _check_published_stats(self) -> None:
        from pathlib import Path

        from .saemnesia_published import read_params, stats_names

        names = stats_names(self.stats)
        match = {n.lower(): n for n in names}.get(self.erase_concept)
        if match is None:
            raise ConfigError(
                "erase_concept",
                f"got {self.erase_concept!r}; the statistics at {self.stats} hold "
                f"{', '.join(names) or 'none'}",
            )
        if self.params is not None:
            read_params(self.params, match)
        if self.percentile is not None:
            check_range("percentile", self.percentile, gt=0, lt=100)
        if self.hookpoint is None:  # where the statistics were read, if convert was told
            info = json.loads((Path(self.stats) / f"{names[match]}.json").read_text("utf-8"))
            self.hookpoint = (info.get("meta") or {}).get("hookpoint")

    def saeuron_config(self) -> SAeUronConfig:
        from pathlib import Path

        features = None
        if self.stats is None and Path(self.sae or "").is_dir():
            features = str(Path(self.sae) / str(self.hookpoint) / "features" / self.erase_concept)
        return SAeUronConfig(
            erase_concept=self.erase_concept, multiplier=self.multiplier,
            num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
            use_fp16=self.use_fp16, device=self.device, model=self.model, sae=self.sae,
            hookpoint=self.hookpoint, features=features, cfg_half=self.cfg_half,
            error_term=self.error_term, batch_size=self.batch_size, height=self.height,
            width=self.width,
        )  # fmt: skip


def _saemnesia(config: SAEmnesiaConfig) -> SAeUronTechnique:
    from pathlib import Path

    cfg = config.saeuron_config()
    if config.stats is not None:
        from .saemnesia_published import technique_from_stats

        return technique_from_stats(config, cfg)
    if cfg.features is None:
        # A hub repo: fetch the hookpoint's folder, whose features/ sit beside the SAE.
        from ..sae import _download

        folder = _download(str(config.sae), config.hookpoint, None, None)
        cfg.features = str(Path(folder) / str(config.hookpoint) / "features" / config.erase_concept)
    tech = SAeUronTechnique(cfg)
    tech.config = config
    return tech


TECHNIQUES.register("saemnesia")(
    TechniqueEntry(
        SAEmnesiaConfig, _saemnesia, "SAEmnesia: a supervised SAE, one latent per concept"
    )
)


def technique_config(name: str, config: dict[str, Any]) -> Config:
    """The validated config of technique ``name`` (nothing is loaded)."""
    return TECHNIQUES.get(name).config.from_dict(config, where="technique.config")


def build_technique(name: str, config: Config) -> Technique:
    logger.info("building technique %s", name)
    return TECHNIQUES.get(name).build(config)
