#!/usr/bin/env bash
# Stable Diffusion 1.4 with SAeUron's published COCO SAE (bcywinski/SAeUron_coco, read at
# unet.up_blocks.1.attentions.1): nothing to name but the concept. A concept without
# bundled features has them computed first (the shortcut method: 20 images, one step).
# Needs the hub (the model and the SAE) and, in practice, a GPU.
# Tiny twin that runs on a CPU: examples/own_model_tiny.py.
set -euo pipefail
saeuron generate --erase nudity --prompt "a photo of a person at the beach" \
    --model CompVis/stable-diffusion-v1-4 --side-by-side --out beach.png
# The published method exactly (scale rule, both CFG halves, the paper's error term):
saeuron generate --erase nudity --prompt "a photo of a person at the beach" \
    --model CompVis/stable-diffusion-v1-4 --guidance-half both --error-term paper --out beach-paper.png
