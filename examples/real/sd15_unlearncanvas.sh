#!/usr/bin/env bash
# SAeUron's UnlearnCanvas SAEs (bcywinski/SAeUron) were trained on the UnlearnCanvas
# fine-tune of Stable Diffusion 1.5: objects at unet.up_blocks.1.attentions.1, styles at
# unet.up_blocks.1.attentions.2. Point --model at that fine-tune (a diffusers folder from the
# UnlearnCanvas release; here ./unlearncanvas-sd15). Needs the hub (the SAE) and a GPU.
set -euo pipefail
# A style's features, contrasted with neutral prompts, saved for reuse:
saeuron concept "Van Gogh" --model ./unlearncanvas-sd15 --sae bcywinski/SAeUron \
    --hookpoint unet.up_blocks.1.attentions.2 --out features/van_gogh
saeuron generate --erase "Van Gogh" --prompt "A painting of a dog in Van Gogh style." \
    --model ./unlearncanvas-sd15 --sae bcywinski/SAeUron \
    --hookpoint unet.up_blocks.1.attentions.2 --features features/van_gogh \
    --side-by-side --out dog.png
