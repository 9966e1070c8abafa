#!/usr/bin/env bash
# Set up everything (scripts/setup.sh) and run the test suite, as CI does.
# Extra arguments go to pytest, e.g. ./scripts/test.sh -k engine
# GPU tests (marked `gpu`) skip themselves where no NVIDIA GPU is visible.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
.venv/bin/llcuda models pull smollm2-135m-instruct-Q4_1

exec .venv/bin/python -m pytest -q "$@"
