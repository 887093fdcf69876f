"""The SAeUron technique as seed 000 describes it: a concept and a strength, the rest resolved.

    tech = SAeUron(erase_concept="nudity", multiplier=-20.0)
    images = tech.generate(["a photo of a person at the beach"], seed=0)

eval-unlearn's own ``saeuron`` technique drives it through ``saeuron.SAeUronPipeline``
(:mod:`saeuron.integrations.eval_unlearn`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import Config, ConfigError, check_choice, check_device, check_range, field
from .erase import CFG_HALVES, ERROR_TERMS, erase
from .features import ConceptFeatures
from .pipelines import BUNDLED_MODELS, bundled_features, bundled_sae, load_pipeline, resolve_device
from .sae import Sae

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"

# Published SAEs that serve a model without being named: model -> (SAE repo, hookpoint).
KNOWN_SAES: dict[str, tuple[str, str]] = {
    "CompVis/stable-diffusion-v1-4": ("bcywinski/SAeUron_coco", "unet.up_blocks.1.attentions.1"),
}

FEATURE_METHODS = ("shortcut", "contrastive")
DEFAULT_MULTIPLIER = -20.0
"""Seed 000's default strength, for concepts whose features carry no tuned one."""


@dataclass
class SAeUronConfig(Config):
    erase_concept: str = field("nudity", help="the concept to suppress; any phrase")
    multiplier: float | None = field(
        None,
        help="gamma, the scale of the concept's latents: negative suppresses, positive "
        f"amplifies; default: the tuned value of a bundled concept, else {DEFAULT_MULTIPLIER}",
    )
    num_inference_steps: int = field(50, help="denoising steps (DDIM)")
    guidance_scale: float = field(7.5, help="CFG scale; must be > 1 when cfg_half is 'cond'")
    use_fp16: bool = field(True, help="half precision where the device supports it (CUDA, MPS)")
    device: str | None = field(
        None, help="cpu, cuda, cuda:N or mps; default: CUDA, then MPS, then CPU"
    )
    model: str = field(DEFAULT_MODEL, help="model id, local folder, or a bundled name")
    sae: str | None = field(None, help="SAE repo id or folder; default: the known SAE of the model")
    hookpoint: str | None = field(None, help="module the SAE reads; default: the known one")
    features: str | None = field(
        None, help="precomputed concept features (NAME.safetensors + NAME.json) to use"
    )
    cfg_half: str = field("cond", help="'cond' edits the conditional half; 'both' every row")
    error_term: str = field("exact", help="'exact' (identity when nothing is edited) or 'paper'")
    feature_method: str = field(
        "shortcut",
        help="how features of a new concept are found: 'shortcut' (20 images, step 10) or "
        "'contrastive' (scores against neutral prompts at every step)",
    )
    num_features: int = field(10, help="latents selected per step by the shortcut")
    batch_size: int = field(4, help="prompts per pipeline call")
    height: int | None = field(None, help="image height; default: the model's")
    width: int | None = field(None, help="image width; default: the model's")

    def __post_init__(self) -> None:
        if not self.erase_concept or not self.erase_concept.strip():
            raise ConfigError("erase_concept", "must be a non-empty string")
        for name in ("multiplier", "guidance_scale"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(name, f"got {value!r}; must be a finite number")
        if self.multiplier is not None and self.multiplier == 0:
            raise ConfigError(
                "multiplier",
                "must not be 0 (negative suppresses the concept, positive amplifies it)",
            )
        check_range("num_inference_steps", self.num_inference_steps, ge=1)
        check_choice("cfg_half", self.cfg_half, CFG_HALVES)
        check_choice("error_term", self.error_term, ERROR_TERMS)
        check_choice("feature_method", self.feature_method, FEATURE_METHODS)
        if self.cfg_half == "cond" and not self.guidance_scale > 1.0:
            raise ConfigError(
                "guidance_scale",
                f"got {self.guidance_scale}; must be > 1.0: SAeUron edits the conditional half "
                "of the CFG batch. For models sampled without CFG (SDXL-Turbo) set "
                "cfg_half='both', which edits the whole batch",
            )
        check_device("device", self.device)
        check_range("num_features", self.num_features, ge=1)
        check_range("batch_size", self.batch_size, ge=1)
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value < 8 or value % 8):
                raise ConfigError(name, f"got {value}; must be a positive multiple of 8")
        if self.sae is None and self.model not in KNOWN_SAES and not _is_bundled(self.model):
            raise ConfigError(
                "sae",
                f"no published SAE is known for model {self.model!r}; name one with sae=... "
                f"and hookpoint=... (known models: {', '.join(sorted(KNOWN_SAES))}, minicanvas)",
            )

    def resolved_sae(self) -> tuple[str, str | None]:
        """The SAE and hookpoint this config will use, without loading anything."""
        if self.sae is not None:
            return self.sae, self.hookpoint
        if _is_bundled(self.model):
            sae, hookpoint = bundled_sae(self.model, self.hookpoint, self.erase_concept)
            return str(sae), hookpoint
        sae, hookpoint = KNOWN_SAES[self.model]
        return sae, self.hookpoint or hookpoint


def _is_bundled(model: str) -> bool:
    return model in BUNDLED_MODELS


class SAeUron:
    """Erase one concept from a diffusion model at inference time."""

    def __init__(self, **config: Any):
        self.config = SAeUronConfig.from_dict(config)
        cfg = self.config
        sae_id, hookpoint = cfg.resolved_sae()
        self.device = resolve_device(cfg.device)
        half = cfg.use_fp16 and self.device.type in ("cuda", "mps")
        if cfg.use_fp16 and not half:
            logger.info("use_fp16: %s has no fast fp16; running in float32", self.device)
        self.dtype = torch.float16 if half else torch.float32

        bundled = (
            None if cfg.features else bundled_features(cfg.model, cfg.erase_concept, hookpoint)
        )
        if cfg.features is None and bundled is None:
            # Said before any model loads, so the user knows what the wait is for.
            logger.warning(
                "concept %r has no bundled features: they will be computed on the fly at "
                "initialisation (%s method); this samples images and can take minutes on a GPU",
                cfg.erase_concept,
                cfg.feature_method,
            )

        self.pipe = load_pipeline(cfg.model, device=str(self.device), dtype=self.dtype)
        self.sae = Sae.from_pretrained(sae_id, hookpoint=hookpoint, device=self.device)
        self.hookpoint = hookpoint or self.sae.meta.get("hookpoint")
        if self.hookpoint is None:
            raise ConfigError("hookpoint", f"the SAE {sae_id} does not say where it reads; name it")
        self.sae.meta["hookpoint"] = self.hookpoint

        if cfg.features is not None:
            self.concept = ConceptFeatures.load(cfg.features)
        elif bundled is not None:
            self.concept = ConceptFeatures.load(bundled)
        else:
            self.concept = self._compute_features()
        self.concept.concept = cfg.erase_concept
        tuned = self.concept.meta.get("multiplier")
        self.multiplier = float(
            cfg.multiplier
            if cfg.multiplier is not None
            else (tuned if tuned is not None else DEFAULT_MULTIPLIER)
        )

    def _compute_features(self) -> ConceptFeatures:
        from .concepts import ConceptBuildConfig, build_concept

        cfg = self.config
        build = ConceptBuildConfig(
            concept=cfg.erase_concept,
            model=cfg.model,
            sae=cfg.resolved_sae()[0],
            hookpoint=self.hookpoint,
            method=cfg.feature_method,
            tau=cfg.num_features if cfg.feature_method == "shortcut" else None,
            shortcut_step=min(10, cfg.num_inference_steps - 1),
            num_inference_steps=cfg.num_inference_steps,
            guidance_scale=cfg.guidance_scale,
            cfg_half=cfg.cfg_half,
        )
        return build_concept(build, pipe=self.pipe, sae=self.sae)

    def erasing(self) -> contextlib.AbstractContextManager[Any]:
        """The erasure as a context manager on ``self.pipe`` (for calls made by hand)."""
        cfg = self.config
        return erase(
            self.pipe,
            self.sae,
            self.concept,
            multiplier=self.multiplier,
            cfg_half=cfg.cfg_half,
            error_term=cfg.error_term,
            hookpoint=self.hookpoint,
        )

    def generate(
        self,
        prompts: list[str] | str,
        seed: int | None = None,
        erase_concept: bool = True,
        seeds: list[int] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        **kw: Any,
    ) -> list[Any]:
        """Images for ``prompts``; prompt i uses seed ``seed + i`` when a seed is given, or
        ``seeds[i]`` (an image then depends on its own seed only, not on its position).
        ``num_inference_steps`` and ``guidance_scale`` override the config for this call."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if seeds is not None and len(seeds) != len(prompts):
            raise ValueError(f"seeds: got {len(seeds)} for {len(prompts)} prompts")
        if seeds is None and seed is not None:
            seeds = [seed + i for i in range(len(prompts))]
        cfg = self.config
        overrides = {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if overrides:
            # replace() reruns the config's checks, so per-call values are held to the same rules.
            cfg = cfg.replace(**overrides)
        images: list[Any] = []
        for start in range(0, len(prompts), cfg.batch_size):
            batch = prompts[start : start + cfg.batch_size]
            generator = (
                [torch.Generator("cpu").manual_seed(s) for s in seeds[start : start + len(batch)]]
                if seeds is not None
                else None
            )
            call = dict(
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                generator=generator,
                height=cfg.height,
                width=cfg.width,
                **kw,
            )
            context = self.erasing() if erase_concept else contextlib.nullcontext()
            with context:
                images.extend(self.pipe(batch, **call).images)
        return images


# -- command line -------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    from .io import atomic_path

    config = SAeUronConfig.from_args(args, erase_concept=args.erase)
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise ConfigError("out", f"got {str(out)!r}; must end in .png, .jpg or .webp")
    tech = SAeUron(**config.to_dict())
    erased = tech.generate([args.prompt], seed=args.seed)[0]
    if args.side_by_side:
        from PIL import Image

        original = tech.generate([args.prompt], seed=args.seed, erase_concept=False)[0]
        canvas = Image.new("RGB", (original.width * 2, original.height), "white")
        canvas.paste(original, (0, 0))
        canvas.paste(erased, (original.width, 0))
        erased = canvas
    with atomic_path(out) as tmp:
        erased.save(tmp, format=out.suffix.lstrip(".").upper().replace("JPG", "JPEG"))
    print(f"wrote {out}")
    return 0


def register_cli(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="sample an image with a concept erased",
        description="Sample one image from PROMPT with CONCEPT erased.",
    )
    parser.add_argument("--erase", required=True, metavar="CONCEPT", help="concept to erase")
    parser.add_argument("--prompt", required=True, help="text prompt")
    parser.add_argument("--out", required=True, help="output image file (.png)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument(
        "--side-by-side", action="store_true", help="write [original | erased] in one image"
    )
    SAeUronConfig.add_arguments(parser, skip=("erase_concept",))
    parser.set_defaults(handler=_generate)
