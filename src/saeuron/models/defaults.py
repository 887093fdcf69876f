"""What a model samples with unless told otherwise, and where its SAE reads.

Bundled models carry this in their ``bundle.json``; well-known hub models are listed here.
Everything else gets Stable Diffusion's defaults and needs its SAE named.

Each known model's block says where the choice comes from (``hookpoint_basis``):
``literature`` (a published SAE reads there) or ``middle-block`` (no published SAE and no
sweep on the real weights yet: the middle block, where U-Net SAE work finds concepts, until
``saeuron bench blocks`` is run on the model; a sweep on the tiny random-weight pipelines
cannot rank blocks). The README's model table says the same with reasons.
"""

from __future__ import annotations

from dataclasses import dataclass

from saeuron.models.resolve import ResolvedModel


@dataclass(frozen=True)
class ModelDefaults:
    num_inference_steps: int
    guidance_scale: float
    sae: str | None = None
    """SAE folder or hub repo that serves this model without being named."""
    hookpoint: str | None = None
    source: str = "fallback"
    """Where these values come from: ``bundle``, ``known`` or ``fallback``."""
    hookpoint_basis: str | None = None
    """Why this hookpoint: ``literature``, ``middle-block`` or ``bundle``."""


SD_DEFAULTS = ModelDefaults(50, 7.5)

def _known(
    steps: int,
    guidance: float,
    sae: str | None = None,
    hookpoint: str | None = None,
    basis: str | None = None,
) -> ModelDefaults:
    return ModelDefaults(steps, guidance, sae, hookpoint, source="known", hookpoint_basis=basis)


KNOWN_MODELS: dict[str, ModelDefaults] = {
    # SAeUron (Cywinski and Deja, 2025): the COCO SAE on SD 1.4's up_blocks.1.attentions.1.
    "CompVis/stable-diffusion-v1-4": _known(
        50, 7.5, "bcywinski/SAeUron_coco", "unet.up_blocks.1.attentions.1", "literature"
    ),
    "runwayml/stable-diffusion-v1-5": _known(50, 7.5),
    "stabilityai/stable-diffusion-2-1": _known(50, 7.5),
    "stabilityai/stable-diffusion-xl-base-1.0": _known(50, 5.0),
    # SDXL-Turbo is distilled for 1-4 steps without classifier-free guidance; sdxl-unbox
    # (Surkov et al., 2025) publishes SAEs on the update of up_blocks.0.attentions.1.
    "stabilityai/sdxl-turbo": _known(
        4, 0.0, None, "unet.up_blocks.0.attentions.1", "literature"
    ),
    # FLUX.1 (19 double-stream + 38 single-stream blocks). Surkov et al. (2025) publish a
    # FLUX.1-schnell SAE on the image stream of the last double-stream block, 18, and their
    # code applies it to FLUX.1-dev too. dev is guidance-distilled (guidance embedded, no
    # CFG batch; the pipeline's 28 steps, 3.5); schnell is timestep-distilled (4 steps,
    # guidance 0, as diffusers documents it).
    "black-forest-labs/FLUX.1-dev": _known(
        28, 3.5, None, "transformer.transformer_blocks.18", "literature"
    ),
    "black-forest-labs/FLUX.1-schnell": _known(
        4, 0.0, None, "transformer.transformer_blocks.18", "literature"
    ),
    # SD3 / SD3.5 Medium: 24 MMDiT joint blocks; no published SAE and no sweep on the real
    # weights: the middle block, 12 of 24. Steps and guidance: the pipeline's
    # defaults (SD3) and Stability's example (SD3.5 Medium, 40 steps, 4.5).
    "stabilityai/stable-diffusion-3-medium-diffusers": _known(
        28, 7.0, None, "transformer.transformer_blocks.12", "middle-block"
    ),
    "stabilityai/stable-diffusion-3.5-medium": _known(
        40, 4.5, None, "transformer.transformer_blocks.12", "middle-block"
    ),
    # PixArt-Sigma XL: 28 DiT blocks; no published SAE and no sweep on the real weights:
    # the middle block, 14 of 28. The pipeline's 20 steps, guidance 4.5.
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": _known(
        20, 4.5, None, "transformer.transformer_blocks.14", "middle-block"
    ),
    "PixArt-alpha/PixArt-Sigma-XL-2-512-MS": _known(
        20, 4.5, None, "transformer.transformer_blocks.14", "middle-block"
    ),
}


def model_defaults(model: ResolvedModel) -> ModelDefaults:
    """What ``model`` samples with and where its SAE reads: its bundle's, a known model's,
    else Stable Diffusion's."""
    bundle = model.bundle
    if bundle is not None:
        return ModelDefaults(
            bundle.num_inference_steps,
            bundle.guidance_scale,
            str(bundle.sae_folder),
            bundle.default_hookpoint,
            source="bundle",
            hookpoint_basis="bundle",
        )
    if model.name in KNOWN_MODELS:
        return KNOWN_MODELS[model.name]
    return SD_DEFAULTS


def resolve_sae(
    model: ResolvedModel,
    sae: ResolvedModel | None,
    hookpoint: str | None,
    concept: str | None = None,
) -> tuple[str | None, str | None]:
    """The SAE (folder or hub id) and hookpoint a concept is read and erased at.

    ``sae`` may be a bundle's name (its SAEs) as well as a folder or hub id, resolved by the
    caller like a model; left out, it is the model's own (a bundle's, or a known model's
    published SAE). The hookpoint, unless given, is where the bundle keeps the concept
    (objects and styles sit at different blocks), else the model's known one; ``None`` leaves
    it to the SAE's own record.
    """
    bundle = sae.bundle if sae is not None else model.bundle
    if bundle is not None:
        return str(bundle.sae_folder), hookpoint or bundle.hookpoint_for(concept)
    if sae is not None:
        return sae.name, hookpoint
    defaults = model_defaults(model)
    return defaults.sae, hookpoint or defaults.hookpoint
