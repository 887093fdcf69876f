#!/usr/bin/env bash
# Rebuild MiniCanvas' assets from seed 0: its classifier, the SAEs and statistics behind the
# published method and SAEmnesia, the guidance-site and text-encoder SAEs the recipes use,
# then the recipes (scripts/minicanvas_recipes.sh). Everything is written into the user's
# copy of the bundle ($SAEURON_CACHE/bundles/minicanvas), which from then on is the
# `minicanvas` every command finds. Run the benchmark after it (`saeuron minicanvas bench`).
#
# MODEL=keep (default) keeps the installed model. MODEL=scratch trains one from seed 0
# (about an hour more). MODEL=finetune fine-tunes the installed one, as MiniCanvas 2 was
# made from MiniCanvas 1 when the other names and the two-object scenes were added.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-minicanvas-work}
MODEL=${MODEL:-keep}
mkdir -p "$WORK"
case "$MODEL" in
    keep) ;;
    scratch) saeuron minicanvas train --part model ;;
    finetune) saeuron minicanvas train --part model --vae-from minicanvas \
        --init-from minicanvas --unet-steps 2000 --lr 3e-4 ;;
    *) echo "MODEL: got '$MODEL'; allowed: keep, scratch, finetune" >&2; exit 2 ;;
esac
saeuron minicanvas train --part classifier
saeuron minicanvas assets --workdir "$WORK/assets"
saeuron minicanvas saemnesia build --workdir "$WORK/assets"
# The text encoder: anchor prompts and prefixed copies (the concept words behind random words
# of the vocabulary, no concept name among them).
saeuron minicanvas guided build --hookpoints text_encoder.final_layer_norm \
    --prompts-per-pair 6 --epochs 40 --topk token --prefixed-copies 8 --workdir "$WORK/text"
# Guidance sites of the UNet: three mid-resolution blocks for objects, one full-resolution
# block for styles, captured in one pass.
saeuron minicanvas guided build \
    --hookpoints unet.up_blocks.1.attentions.1,unet.down_blocks.1.attentions.1,unet.up_blocks.1.attentions.0,unet.up_blocks.2.attentions.2 \
    --prompts-per-pair 5 --epochs 6 --topk token \
    --stats-kinds unet.up_blocks.1.attentions.1=object,unet.down_blocks.1.attentions.1=object,unet.up_blocks.1.attentions.0=object,unet.up_blocks.2.attentions.2=style \
    --workdir "$WORK/unet"
scripts/minicanvas_recipes.sh
