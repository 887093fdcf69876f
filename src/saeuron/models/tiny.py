"""Tiny Stable Diffusion pipelines built from config, with SD's module names.

Random weights, real CLIP tokenizer: fast enough for tests on a CPU and shaped like the
real thing, so hooks run for real on them.
"""

from __future__ import annotations

from typing import Any

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from saeuron.models.tokenizer import clip_tokenizer

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

TINY_MODELS = ("tiny-sd", "tiny-sdxl", *TINY_PUBLISHED)


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


def _vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
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


def build_tiny(name: str, seed: int = 0):
    if name in TINY_PUBLISHED:
        architecture, scheduler = TINY_PUBLISHED[name]
        pipe = build_tiny(architecture, seed)
        pipe.scheduler = published_scheduler(scheduler)
        return pipe
    if name == "tiny-sd":
        return build_tiny_sd(seed)
    if name == "tiny-sdxl":
        return build_tiny_sdxl(seed)
    raise ValueError(f"unknown tiny model {name!r}; allowed: {', '.join(TINY_MODELS)}")
