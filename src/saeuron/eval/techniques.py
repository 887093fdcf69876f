"""What ``saeuron eval`` measures: techniques by name, each built from its config.

A technique answers ``generate(prompts, seeds=...) -> list[PIL.Image]`` where image i depends
on ``prompts[i]`` and ``seeds[i]`` only, so a resumed run regenerates exactly what it lost.
``unerased(prompts, seeds)`` gives the same model's images without the erasure (the
reference of the ``preservation`` metric).

- ``saeuron``: the core technique (:class:`saeuron.technique.SAeUron`), seed 000's config.
- ``none``: the model unchanged.
- ``negative_prompt``: the concept as the negative prompt of classifier-free guidance.
"""

from __future__ import annotations

import contextlib
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


def technique_config(name: str, config: dict[str, Any]) -> Config:
    """The validated config of technique ``name`` (nothing is loaded)."""
    return TECHNIQUES.get(name).config.from_dict(config, where="technique.config")


def build_technique(name: str, config: Config) -> Technique:
    logger.info("building technique %s", name)
    return TECHNIQUES.get(name).build(config)
