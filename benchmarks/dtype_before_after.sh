#!/usr/bin/env bash
# Wall time of the main job and the test suite on a CPU without bf16 kernels (oneDNN is denied them, as on an
# AVX-512 CPU without AVX512-BF16 or AMX), before the dtype fix (bf16, as 0.1 chose) and after (fp32, what
# choose_dtype now picks there). One run each, back to back; prints one line per measurement.
# Usage: bash benchmarks/dtype_before_after.sh [OUT]   (OUT: folder for the job's results, default runs/dtype)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/dtype}
mkdir -p "$out"
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled TOKENIZERS_PARALLELISM=false
export ONEDNN_MAX_CPU_ISA=AVX512_CORE
for dtype in float32 bfloat16; do
  export LATENTCOMM_DTYPE=$dtype
  start=$EPOCHREALTIME
  .venv/bin/latentcomm run --agents 3 --questions 6 --modes latent kv text --out "$out/$dtype" > "$out/$dtype-job.log" 2>&1
  echo "$dtype: latentcomm run --agents 3 --questions 6 --modes latent kv text: $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s"
  start=$EPOCHREALTIME
  .venv/bin/python -m pytest -q -p no:cacheprovider > "$out/$dtype-tests.log" 2>&1
  echo "$dtype: the test suite ($(tail -1 "$out/$dtype-tests.log")): $(awk "BEGIN {printf \"%.1f\", $EPOCHREALTIME - $start}") s"
done
