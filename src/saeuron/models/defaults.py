"""What a model samples with unless told otherwise, and the SAE that serves it.

Bundled models carry this in their ``bundle.json``; well-known hub models are listed here.
Everything else gets Stable Diffusion's defaults and needs its SAE named.
"""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.models.bundles import find_bundle


@dataclass(frozen=True)
class ModelDefaults:
    num_inference_steps: int
    guidance_scale: float
    sae: str | None = None
    """SAE folder or hub repo that serves this model without being named."""
    hookpoint: str | None = None
    source: str = "fallback"
    """Where these values come from: ``bundle``, ``known`` or ``fallback``."""


SD_DEFAULTS = ModelDefaults(50, 7.5)

KNOWN_MODELS: dict[str, ModelDefaults] = {
    # SAeUron (Cywinski and Deja, 2025): the COCO SAE on SD 1.4's up_blocks.1.attentions.1.
    "CompVis/stable-diffusion-v1-4": ModelDefaults(
        50, 7.5, "bcywinski/SAeUron_coco", "unet.up_blocks.1.attentions.1", source="known"
    ),
    "runwayml/stable-diffusion-v1-5": ModelDefaults(50, 7.5, source="known"),
    "stabilityai/stable-diffusion-2-1": ModelDefaults(50, 7.5, source="known"),
    "stabilityai/stable-diffusion-xl-base-1.0": ModelDefaults(50, 5.0, source="known"),
    # SDXL-Turbo is distilled for 1-4 steps without classifier-free guidance.
    "stabilityai/sdxl-turbo": ModelDefaults(
        4, 0.0, None, "unet.up_blocks.0.attentions.1", source="known"
    ),
}


def model_defaults(model: str | None) -> ModelDefaults:
    bundle = find_bundle(model)
    if bundle is not None:
        return ModelDefaults(
            bundle.num_inference_steps,
            bundle.guidance_scale,
            str(bundle.sae_folder),
            bundle.default_hookpoint,
            source="bundle",
        )
    if model in KNOWN_MODELS:
        return KNOWN_MODELS[model]
    return SD_DEFAULTS


def resolve_sae(
    model: str | None, sae: str | None, hookpoint: str | None, concept: str | None = None
) -> tuple[str | None, str | None]:
    """The SAE (folder or hub id) and hookpoint a concept is read and erased at.

    ``sae`` may be a bundle's name (its SAEs) as well as a folder or hub id; left out, it is
    the model's own (a bundle's, or a known model's published SAE). The hookpoint, unless
    given, is where the bundle keeps the concept (objects and styles sit at different
    blocks), else the model's known one; ``None`` leaves it to the SAE's own record.
    """
    bundle = find_bundle(sae) if sae is not None else find_bundle(model)
    if bundle is not None:
        return str(bundle.sae_folder), hookpoint or bundle.hookpoint_for(concept)
    if sae is not None:
        return sae, hookpoint
    defaults = model_defaults(model)
    return defaults.sae, hookpoint or defaults.hookpoint
