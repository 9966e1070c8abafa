#!/usr/bin/env bash
# Scale-out check for a GPU machine: a CUDA rpc-server worker on loopback, a model loaded through it.
#
#   LLCUDA_BIN_DIR=/path/to/cuda-build/bin benchmarks/scaleout_gpu_check.sh /path/to/model.gguf [REPORT.json]
#
# Runs, each with a fresh llama-server and greedy decoding (ignore_eos) of the same prompts:
#   local   - the model on this host's GPU(s), no worker (the baseline)
#   worker  - llama-server offloads only to the worker (--device RPC0): every weight crosses RPC
#   mixed   - llama.cpp's default device list: the worker's GPU and the local GPU(s), split by free memory
#   death   - the worker is stopped, then one more request: the error llcuda raises
# and prints one JSON report to stdout (also to REPORT.json when given).
# Knobs (environment): WORKER_DEVICE (default CUDA0; "auto" = rpc-server's choice), MAX_TOKENS (64),
# CTX_SIZE (2048), PYTHON (default: .venv/bin/python if present, else python3).
# Logs (llama-server, rpc-server) go to $LLCUDA_HOME/logs, by default a temporary folder's.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $# -lt 1 || $# -gt 2 || ! -f "$1" ]]; then
  echo "usage: LLCUDA_BIN_DIR=/path/to/cuda/bin $0 MODEL.gguf [REPORT.json]" >&2
  exit 2
fi
if [[ -z "${LLCUDA_BIN_DIR:-}" ]]; then
  echo "set LLCUDA_BIN_DIR to the bin/ folder of a CUDA build of llama.cpp with rpc-server (GGML_RPC=ON)" >&2
  exit 2
fi
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export LLCUDA_HOME="${LLCUDA_HOME:-$(mktemp -d)/llcuda-home}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

exec "$PYTHON" - "$@" <<'PY'
import json
import os
import sys
import time

from llcuda import InferenceEngine, LlcudaError
from llcuda.processes import rpc_worker as rpc
from llcuda.system import binaries as bootstrap
from llcuda.system import gpu

MODEL = sys.argv[1]
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "64"))
CTX = int(os.environ.get("CTX_SIZE", "2048"))
DEVICE = os.environ.get("WORKER_DEVICE", "CUDA0")
PROMPTS = ["Once upon a time", "The three laws of thermodynamics are", "def quicksort(items):"]
VERBOSE = ["--log-verbosity", "4"]  # llama.cpp logs buffer placement at verbosity 4


def run(name, **load):
    entry = {"name": name}
    try:
        with InferenceEngine(start_timeout=600) as engine:
            engine.load_model(MODEL, ctx_size=CTX, n_parallel=1, **load)
            entry["load_seconds"] = round(engine.load_seconds or 0.0, 3)
            engine.infer(PROMPTS[0], max_tokens=8, temperature=0.0)  # warm-up
            results = [engine.infer(p, max_tokens=MAX_TOKENS, temperature=0.0, ignore_eos=True) for p in PROMPTS]
            log_text = engine.server.log_path.read_text(errors="replace")
            entry.update(
                ok=True,
                texts=[r.text for r in results],
                tokens=[r.tokens_generated for r in results],
                decode_tokens_per_sec=[round(r.tokens_per_sec, 1) for r in results],
                prompt_ms=[r.timings.get("prompt_ms") for r in results],
                placement_mib=rpc.buffer_placement(log_text),
                server_log=str(engine.server.log_path),
            )
    except LlcudaError as exc:
        entry.update(ok=False, error=str(exc)[:4000])
    return entry


binaries = bootstrap.find_binaries()
report = {
    "model": MODEL,
    "bin_dir": str(binaries.bin_dir),
    "build_info": {k: binaries.build_info.get(k) for k in ("llama_cpp_build", "backend", "cuda_version", "cuda_archs")},
    "gpus": [g.as_dict() for g in gpu.detect().gpus],
    "max_tokens": MAX_TOKENS,
    "runs": [],
}
report["runs"].append(run("local", extra_args=VERBOSE))

devices = [] if DEVICE == "auto" else [DEVICE]
worker = rpc.RpcWorker(devices=devices)
try:
    t0 = time.monotonic()
    worker.start(timeout=300)
    report["worker"] = {
        "endpoint": worker.endpoint,
        "start_seconds": round(time.monotonic() - t0, 3),
        "devices": [d.__dict__ for d in worker.devices],
        "log": str(worker.log_path),
    }
    report["runs"].append(run("worker", rpc=[worker.endpoint], extra_args=[*VERBOSE, "--device", "RPC0"]))
    report["runs"].append(run("mixed", rpc=[worker.endpoint], extra_args=VERBOSE))

    death = {"name": "death"}
    try:
        with InferenceEngine(start_timeout=600) as engine:
            engine.load_model(MODEL, ctx_size=CTX, n_parallel=1, rpc=[worker.endpoint],
                              extra_args=["--device", "RPC0"])
            engine.infer(PROMPTS[0], max_tokens=4, temperature=0.0)
            worker.stop()
            try:
                engine.infer(PROMPTS[0], max_tokens=4, temperature=0.0)
                death["error"] = None  # a request after the worker died should not succeed
            except LlcudaError as exc:
                death.update(error_type=type(exc).__name__, error=str(exc).splitlines()[0])
    except LlcudaError as exc:
        death.update(setup_failed=str(exc)[:4000])
    report["runs"].append(death)
finally:
    worker.stop()

base = report["runs"][0]
for entry in report["runs"][1:]:
    if entry.get("ok") and base.get("ok"):
        entry["greedy_equals_local"] = [a == b for a, b in zip(entry["texts"], base["texts"])]
for entry in report["runs"]:
    entry.pop("texts", None)

text = json.dumps(report, indent=2)
print(text)
if len(sys.argv) > 2:
    with open(sys.argv[2], "w") as fh:
        fh.write(text + "\n")
PY
