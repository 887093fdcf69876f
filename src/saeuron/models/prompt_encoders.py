"""Hookpoints inside a prompt encoder: ``text_encoder.final_layer_norm``.

The denoiser's blocks run at every step; a text encoder runs once per prompt, before the
first step, and its output reaches every cross-attention block of every step. An SAE there
reads the prompt's token embeddings (``[B, T, C]``): a capture runs the encoder alone on
tokenized prompts (no sampling), and an erasing hook edits every call of the module, the
prompt's and the negative prompt's alike, with no step to look up.

Which output a pipeline uses differs: Stable Diffusion 1.x and 2.x take the last layer
(``final_layer_norm``), SDXL the second-to-last layer of both encoders (``encoder.layers.N``
with N one before the last), SD3 and FLUX add a T5 (``text_encoder_3``, ``text_encoder_2``).
transformers 4 nests a CLIP encoder's layers in ``text_model``
(``text_encoder.text_model.final_layer_norm``); either name resolves. Each
``text_encoder{suffix}`` pairs with ``tokenizer{suffix}``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saeuron.models.sites import PROMPT_ENCODER_PREFIX, prompt_encoder_of
from saeuron.utils.errors import ConfigError


def tokenizer_name(component: str) -> str:
    """``text_encoder_2`` -> ``tokenizer_2``: the pairing of every diffusers pipeline."""
    return "tokenizer" + component[len(PROMPT_ENCODER_PREFIX) :]


def encode_prompts(pipe: Any, component: str, prompts: list[str]) -> Tensor:
    """Run ``pipe``'s ``component`` on ``prompts`` tokenized the pipelines' way (padded to
    the tokenizer's length, truncated); hooks on its modules see exactly these calls."""
    encoder = getattr(pipe, component, None)
    tokenizer = getattr(pipe, tokenizer_name(component), None)
    if encoder is None or tokenizer is None:
        raise ConfigError(
            "hookpoint",
            f"this pipeline has no {component} with a {tokenizer_name(component)} to run it on",
        )
    ids = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    device = next(encoder.parameters()).device
    with torch.no_grad():
        out = encoder(ids.to(device))
    return out[0]


__all__ = ["PROMPT_ENCODER_PREFIX", "encode_prompts", "prompt_encoder_of", "tokenizer_name"]
