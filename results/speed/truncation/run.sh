#!/usr/bin/env bash
# Issue 23, response truncation priced by training: two heads from the same fresh start, same data, same steps,
# reconstructing responses cut to 64 tokens (the shipped head's setting) or to 32; then each read by
# `bench positions` on the same 128 held-out responses, scored up to 64 tokens. Needs the training run runs/v3:
#   latentcomm generate --run runs/v3 --import packaged && latentcomm targets --run runs/v3 --teacher minilm
# Resumable (each training continues from its checkpoints).
set -euo pipefail
cd "$(dirname "$0")/../../.."
for tokens in 64 32; do
  out=runs/truncation/cut$tokens
  resume=(); [ -d $out/checkpoints ] && resume=(--resume)
  start=$EPOCHREALTIME
  .venv/bin/latentcomm train --run runs/v3 --out $out --max-response-tokens $tokens --micro-batch 8 --max-steps 250 \
    --lr 1e-3 --warmup-steps 20 --in-context-share 0.5 --align-fit 2048 --seed 0 --checkpoint-every 50 --threads 2 \
    "${resume[@]}"
  echo "cut $tokens: trained in $(awk "BEGIN {printf \"%.0f\", $EPOCHREALTIME - $start}") s"
done
for head in cut64 cut32; do  # both scored on the same responses up to 64 tokens, beside the shipped head
  .venv/bin/latentcomm bench positions --run runs/v3 --samples 128 --head runs/truncation/$head/head \
    --response-tokens 64 --out results/speed/truncation/$head
done
.venv/bin/latentcomm bench positions --run runs/v3 --samples 128 --response-tokens 64 --out results/speed/positions
