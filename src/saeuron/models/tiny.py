"""Tiny pipelines built from config, with the real models' module names.

Stable Diffusion 1.x and SDXL (UNets), SD3 (MMDiT joint blocks), FLUX (double- and
single-stream blocks, guidance-distilled) and PixArt-Sigma (DiT blocks with cross-attention).
Random weights, Stable Diffusion's real CLIP tokenizer and a tiny offline T5 tokenizer: fast
enough for tests on a CPU and shaped like the real thing, so hooks run for real on them.
Each samples 32x32 images by default (PixArt: 256x256, its smallest resolution bin), with
64 image tokens at its transformer blocks (PixArt: 256).
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from saeuron.models.tokenizer import clip_tokenizer, t5_tokenizer

PUBLISHED_SCHEDULERS: dict[str, dict[str, Any]] = {
    # CompVis/stable-diffusion-v1-4: scheduler/scheduler_config.json
    "sd14": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.7.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    # stabilityai/stable-diffusion-2-1: scheduler/scheduler_config.json
    "sd21": {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.8.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    # stabilityai/stable-diffusion-xl-base-1.0: scheduler/scheduler_config.json
    "sdxl-base": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    # stabilityai/sdxl-turbo: scheduler/scheduler_config.json (1-4 steps, no CFG)
    "sdxl-turbo": {
        "_class_name": "EulerAncestralDiscreteScheduler",
        "_diffusers_version": "0.24.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "trailing",
        "trained_betas": None,
    },
}
"""The schedulers the stock pipelines publish, as their ``scheduler_config.json`` files
hold them: tiny pipelines carry them so tests sample exactly as those models do."""

TINY_PUBLISHED = {
    "tiny-sd14": ("tiny-sd", "sd14"),
    "tiny-sd21": ("tiny-sd", "sd21"),
    "tiny-sdxl-base": ("tiny-sdxl", "sdxl-base"),
    "tiny-sdxl-turbo": ("tiny-sdxl", "sdxl-turbo"),
}
"""Tiny pipelines with a published model's scheduler: name -> (architecture, scheduler)."""

TINY_DIT_MODELS = ("tiny-sd3", "tiny-flux", "tiny-pixart")
TINY_MODELS = ("tiny-sd", "tiny-sdxl", *TINY_DIT_MODELS, *TINY_PUBLISHED)


def published_scheduler(name: str) -> Any:
    """The scheduler a stock pipeline ships with (a key of :data:`PUBLISHED_SCHEDULERS`)."""
    config = PUBLISHED_SCHEDULERS[name]
    return getattr(diffusers, config["_class_name"]).from_config(config)


def sd_ddim_scheduler() -> DDIMScheduler:
    # Stable Diffusion 1.x's schedule.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _vae(levels: int = 2, **kwargs) -> AutoencoderKL:
    """A VAE that shrinks images by ``2 ** (levels - 1)``, with 4 latent channels."""
    channels = (8, 16, 16, 16)[:levels]
    return AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
        **kwargs,
    )


def clip_text_config(
    hidden: int = 32,
    intermediate: int = 37,
    projection: int | None = None,
    act: str = "gelu",
):
    kwargs = {"projection_dim": projection} if projection else {}
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        hidden_act=act,
        **kwargs,
    )


def build_tiny_sd(seed: int = 0):
    """A 32-px SD 1.x pipeline; ``unet.up_blocks.1.attentions.{0,1,2}`` exist (8x8, 32 ch)."""

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    pipe = StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(clip_text_config()),
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl(seed: int = 0):
    """A 32-px SDXL pipeline; ``unet.up_blocks.0.attentions.1`` exists (8x8, 32 ch)."""

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + 32,
        cross_attention_dim=64,
        norm_num_groups=8,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=CLIPTextModel(clip_text_config()),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(projection=32)),
        tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(),
        unet=unet,
        scheduler=sd_ddim_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def t5_encoder(d_model: int = 32) -> T5EncoderModel:
    """A 2-layer T5 encoder (the text encoder of SD3, FLUX and PixArt) over the tiny T5
    tokenizer's vocabulary."""
    return T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tokenizer()),
            d_model=d_model,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            dropout_rate=0.0,
            feed_forward_proj="gated-gelu",
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def build_tiny_sd3(seed: int = 0):
    """A 32-px SD3 pipeline; ``transformer.transformer_blocks.{0,1,2}`` are MMDiT joint
    blocks (64 image tokens of width 32; the last one is SD3's context-pre-only block)."""

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=3,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        # SD3's flow-matching schedule (shift 3.0).
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(2, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                 use_post_quant_conv=False),  # fmt: skip
        text_encoder=CLIPTextModelWithProjection(clip_text_config(projection=32)),
        tokenizer=clip_tokenizer(),
        text_encoder_2=CLIPTextModelWithProjection(clip_text_config(projection=32)),
        tokenizer_2=clip_tokenizer(),
        # SD3 pads the CLIP embeddings (32 + 32) to T5's width.
        text_encoder_3=t5_encoder(64),
        tokenizer_3=t5_tokenizer(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux(seed: int = 0):
    """A 32-px FLUX.1-dev-like pipeline: guidance embedded in the transformer, no CFG batch;
    ``transformer.transformer_blocks.{0,1}`` (double-stream) and
    ``transformer.single_transformer_blocks.{0,1}`` (single-stream), 64 image tokens of
    width 32."""

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels, packed 2x2 as FLUX does
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    pipe = FluxPipeline(
        # FLUX.1's flow-matching schedule, shifted by the image's token count.
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_vae(2, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                 use_post_quant_conv=False),  # fmt: skip
        text_encoder=CLIPTextModel(clip_text_config()),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(32),
        tokenizer_2=t5_tokenizer(),
        transformer=transformer,
    )
    # FluxPipeline samples default_sample_size * vae_scale_factor pixels unless told (1024
    # for FLUX.1); 16 latent pixels a side keep the tiny model at 32 px.
    pipe.default_sample_size = 16
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pixart(seed: int = 0):
    """A PixArt-Sigma pipeline; ``transformer.transformer_blocks.{0,1,2}`` are DiT blocks
    (self-attention over the image, cross-attention to T5), 256 image tokens of width 32.

    sample_size 32 is PixArt's smallest resolution bin: the pipeline samples 256x256."""

    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=32,
        num_layers=3,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=32,
        out_channels=8,  # noise and learned variance, as PixArt
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=t5_tokenizer(),
        text_encoder=t5_encoder(32),
        vae=_vae(4),
        transformer=transformer,
        # PixArt samples with DPM-Solver++.
        scheduler=DPMSolverMultistepScheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


_BUILDERS = {
    "tiny-sd": build_tiny_sd,
    "tiny-sdxl": build_tiny_sdxl,
    "tiny-sd3": build_tiny_sd3,
    "tiny-flux": build_tiny_flux,
    "tiny-pixart": build_tiny_pixart,
}


def build_tiny(name: str, seed: int = 0):
    if name in TINY_PUBLISHED:
        architecture, scheduler = TINY_PUBLISHED[name]
        pipe = build_tiny(architecture, seed)
        pipe.scheduler = published_scheduler(scheduler)
        return pipe
    if name not in _BUILDERS:
        raise ValueError(f"unknown tiny model {name!r}; allowed: {', '.join(TINY_MODELS)}")
    return _BUILDERS[name](seed)
