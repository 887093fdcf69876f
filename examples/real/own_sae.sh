#!/usr/bin/env bash
# Any diffusers model without a published SAE (SD 1.5, SD 2.1, SDXL, SD3, FLUX, PixArt):
# capture one block's activations, train an SAE, find the concept, erase it. Only --model,
# --hookpoint and the sizes differ between models (docs/guides/own-model.md has the block of
# each). Needs the hub and a GPU. Tiny twin that runs on a CPU: examples/own_model_tiny.py.
set -euo pipefail
MODEL=stable-diffusion-v1-5/stable-diffusion-v1-5
HOOK=unet.up_blocks.1.attentions.1
saeuron capture --model "$MODEL" --hookpoint "$HOOK" --prompts prompts.txt \
    --num-inference-steps 50 --out acts/
saeuron train --activations acts/ --expansion-factor 16 --k 32 --out saes/
saeuron concept "a cat" --model "$MODEL" --sae saes/ --hookpoint "$HOOK" --out features/cat
saeuron generate --erase "a cat" --prompt "a cat on a sofa" --model "$MODEL" --sae saes/ \
    --hookpoint "$HOOK" --features features/cat --side-by-side --out cat.png
