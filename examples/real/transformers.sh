#!/usr/bin/env bash
# SD3, FLUX.1 and PixArt-Sigma: no SAE is published for them, so train one (as in
# own_sae.sh) at the model's block: transformer.transformer_blocks.12 (SD3 / SD3.5 Medium),
# .18 (FLUX.1), .14 (PixArt-Sigma). `saeuron bench blocks` ranks the blocks of a model for a
# concept. Needs the hub and a GPU (FLUX.1-dev is 12B). Tiny twins: tiny-sd3, tiny-flux,
# tiny-pixart (the first command runs on a CPU as written).
set -euo pipefail
saeuron capture --model tiny-flux --hookpoint transformer.single_transformer_blocks.0 \
    --prompts prompts.txt --num-inference-steps 2 --out acts-tiny/
saeuron bench blocks --model black-forest-labs/FLUX.1-dev --concept "a cat" --out blocks/
saeuron capture --model black-forest-labs/FLUX.1-dev --hookpoint transformer.transformer_blocks.18 \
    --prompts prompts.txt --out acts/
saeuron train --activations acts/ --expansion-factor 4 --k 32 --out saes/
saeuron concept "a cat" --model black-forest-labs/FLUX.1-dev --sae saes/ \
    --hookpoint transformer.transformer_blocks.18 --out features/cat
# FLUX.1-dev is guidance-distilled: no CFG batch, every row is conditional.
saeuron generate --erase "a cat" --prompt "a cat on a sofa" --model black-forest-labs/FLUX.1-dev \
    --sae saes/ --hookpoint transformer.transformer_blocks.18 --features features/cat \
    --guidance-half both --out cat.png
