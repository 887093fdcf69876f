#!/usr/bin/env bash
# SD 1.4 at the paper's scale: 83k prompts, 50 steps, 8 GPUs, activations on S3 (install
# s3fs). A killed capture or training resumes where it stopped, with any process count.
set -euo pipefail
accelerate launch --num_processes 8 -m saeuron capture --model CompVis/stable-diffusion-v1-4 \
    --hookpoint unet.up_blocks.1.attentions.1 --prompts prompts.txt \
    --num-inference-steps 50 --out s3://my-bucket/sd14-up.1.1
accelerate launch --num_processes 8 -m saeuron train \
    --activations s3://my-bucket/sd14-up.1.1 --expansion-factor 16 --k 32 --out saes/
# On CPU processes (accelerate's --cpu starts only one):
CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 -m saeuron capture \
    --model tiny-sd --hookpoint unet.up_blocks.1.attentions.1 --prompts prompts.txt --out acts/
