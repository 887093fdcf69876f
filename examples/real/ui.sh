#!/usr/bin/env bash
# The slider page on your own model: the model, its SAE, and (optionally) a recipe, whose
# concepts get one slider each (0 off, 1 the tuned strength). No bundle.json needed.
# Needs the [ui] extra; a GPU for a real model.
set -euo pipefail
saeuron ui --model CompVis/stable-diffusion-v1-4 --port 8000
saeuron ui --model stable-diffusion-v1-5/stable-diffusion-v1-5 --sae saes/ \
    --hookpoint unet.up_blocks.1.attentions.1 --recipe cat.json
saeuron ui --model minicanvas --recipe bundled
