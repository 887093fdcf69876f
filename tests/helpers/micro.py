"""SD 1.x's block names on a UNet small enough to trace and compile in a test."""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

from saeuron.erasure.features import ConceptFeatures
from saeuron.models.tiny import build_tiny_sd
from saeuron.sae import Sae, SaeConfig

HOOK = "unet.up_blocks.1.attentions.1"


def micro_attention_sd():
    """The tiny pipeline with an 8-wide micro UNet, an SAE of 64 latents on ``HOOK`` and
    features that fire on most tokens."""
    pipe = build_tiny_sd()
    torch.manual_seed(0)
    pipe.unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 8),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=4,
    )  # fmt: skip
    sae = Sae(SaeConfig(d_in=8, expansion_factor=8, k=4))
    sae.meta["hookpoint"] = HOOK
    return pipe, sae, ConceptFeatures.from_latents("c", list(range(0, 64, 3)), threshold=0.0)
