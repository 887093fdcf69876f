#!/usr/bin/env bash
# SDXL-Turbo with sdxl-unbox's published SAEs (Surkov et al.): their checkpoints/ folder as
# released, read on the update (output - input) of unet.up_blocks.0.attentions.1. Turbo
# samples 4 steps without CFG, so every row is edited (--guidance-half both). Needs a GPU.
# Tiny twin: the tiny-sdxl pipeline in tests/cli/test_end_to_end.py.
set -euo pipefail
saeuron concept "a cat" --model stabilityai/sdxl-turbo --sae checkpoints/ \
    --hookpoint unet.up_blocks.0.attentions.1 --method shortcut --guidance-half both \
    --out features/cat
saeuron generate --erase "a cat" --prompt "a cat in a garden" --model stabilityai/sdxl-turbo \
    --sae checkpoints/ --hookpoint unet.up_blocks.0.attentions.1 --features features/cat \
    --guidance-half both --side-by-side --out cat.png
