#!/usr/bin/env bash
# One GPU and many. Every command takes --device (cpu, cuda, cuda:N, mps); by default CUDA,
# then MPS, then the CPU. `saeuron env` says what torch sees.
set -euo pipefail
saeuron env
saeuron generate --erase nudity --prompt "a photo of a person at the beach" \
    --model CompVis/stable-diffusion-v1-4 --device cuda:1 --batch-size 8 --num-images 8 \
    --out beach/
# An evaluation split over processes (each samples its share of every metric's images):
accelerate launch --num_processes 4 -m saeuron eval -c examples/eval/saeuron_asr.json
# Tuning workers sharing one study (start the same command on each machine or GPU):
saeuron tune --model CompVis/stable-diffusion-v1-4 --concept cat --prompt-set prompts.json \
    --judge clip --saes saes/ --stats stats/ --trials 200 --out cat.json \
    --storage postgresql://user@db/saeuron --device cuda:0
# What erasing costs here, CPU and CUDA side by side:
saeuron bench perf --device cuda --out bench/
