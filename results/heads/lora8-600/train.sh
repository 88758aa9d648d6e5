#!/usr/bin/env bash
# Issue 25 layer 3, 2026-12-06: the shipped head + encoder LoRA 8 (q/v), response + restate + qa objectives.
# Resumable: a second call continues from runs/heads/lora8-600/checkpoints. Needs the training run runs/v3:
#   latentcomm generate --run runs/v3 --import packaged && latentcomm targets --run runs/v3 --teacher minilm
set -euo pipefail
cd "$(dirname "$0")/../../.."
resume=(); [ -d runs/heads/lora8-600/checkpoints ] && resume=(--resume)
.venv/bin/latentcomm train --run runs/v3 --init-head latentcomm/pretrained/smollm2-135m-instruct --encoder-lora-rank 8 \
  --micro-batch 8 --max-steps 600 --lr 1e-3 --warmup-steps 20 --max-response-tokens 64 --max-query-tokens 256 \
  --in-context-share 0.5 --restate-share 0.4 --qa-share 0.3 --checkpoint-every 50 --threads 2 --align-fit 2048 \
  --out runs/heads/lora8-600 "${resume[@]}" "$@"
