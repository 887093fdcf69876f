#!/usr/bin/env bash
# Remake the MiniCanvas recipes that `SAeUron(erase_concept=c, model="minicanvas")` uses by
# default: `saeuron tune` per concept, on the bundle's validation prompt set, writing
# src/saeuron/data/minicanvas/recipes/<concept>.json with its trials table and plot.
# Each study starts from the settings below (what the earlier validation grids chose, and
# for some objects a few neighbours of it, each its own trial); TRIALS=1 re-measures the
# first alone, TRIALS=40 searches on from them. MiniCanvas 2's recipes were made with
# TRIALS=2 TUNE_FLAGS=--no-heldout.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-1}
OUT=${OUT:-src/saeuron/data/minicanvas/recipes}
CONCEPTS=${CONCEPTS:-}
mkdir -p "$OUT"
tune() {
    local concept=$1 setting=$2 trials=$TRIALS
    if [ -n "$CONCEPTS" ] && [[ ",$CONCEPTS," != *",$concept,"* ]]; then return; fi
    # A list of settings: at least one trial each.
    if [[ $setting == "["* ]]; then
        local n
        n=$(python -c 'import json, sys; print(len(json.loads(sys.argv[1])))' "$setting")
        trials=$(( n > TRIALS ? n : TRIALS ))
    fi
    saeuron tune --model minicanvas --concept "$concept" --trials "$trials" \
        --out "$OUT/$concept.json" --enqueue "$setting" ${TUNE_FLAGS:-}
}
tune striped '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "dotted"}'
tune blueprint '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "striped"}'
tune gradient '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "pastel"}'
tune pastel '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "grainy"}'
tune neon '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "pastel"}'
tune outlined '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "pastel"}'
tune dotted '{"sites": "text_encoder.final_layer_norm", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.25}'
tune checkered '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "outlined"}'
tune diagonal '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": 0.0, "anchor": "pastel"}'
tune grainy '{"sites": "text_encoder.final_layer_norm", "rule": "anchor", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.25, "anchor": "blueprint"}'
tune circle '[{"sites": "unet.up_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -20.0, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "text_encoder.final_layer_norm+unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}]'
tune square '{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}'
tune triangle '[{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "text_encoder.final_layer_norm+unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}]'
tune star '[{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -15.0, "window": "all", "guidance_half": "cond"}, {"sites": "text_encoder.final_layer_norm+unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}]'
tune cross '{"sites": "text_encoder.final_layer_norm", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5}'
tune heart '{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}'
tune moon '{"sites": "text_encoder.final_layer_norm+unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}'
tune arrow '[{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -10.0, "window": "all", "guidance_half": "cond"}, {"sites": "text_encoder.final_layer_norm+unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}, {"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -7.5, "window": "all", "guidance_half": "cond"}]'
tune house '{"sites": "unet.up_blocks.1.attentions.1+unet.down_blocks.1.attentions.1+unet.up_blocks.1.attentions.0", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_denoiser": -20.0, "window": "all", "guidance_half": "cond"}'
tune ring '{"sites": "text_encoder.final_layer_norm", "rule": "ablate", "tau": 10, "max_other_ratio": 0.3, "strength_text": -0.5}'
