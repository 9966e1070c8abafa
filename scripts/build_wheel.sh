#!/usr/bin/env bash
# Build llcuda's platform wheel (llama.cpp's binaries inside) and prove it in a fresh venv, offline.
#
#   scripts/build_wheel.sh                             # CI: CPU build (cached), wheel, fresh-venv inference
#   scripts/build_wheel.sh --prefix DIR --no-smoke     # any prefix, e.g. a CUDA build on the GPU machine
#
# Options:
#   --prefix DIR         a prefix from scripts/build_binaries.py (default: build or reuse the CPU one)
#   --no-ui              leave the browser chat page out (by default the prefix's own goes in, or one
#                        built by `scripts/build_binaries.py --ui-only`, which needs Node.js and npm)
#   --out DIR            where the wheel and the reports go (default: dist/)
#   --cuda-libs MODE     pypi (default: NVIDIA's wheels as dependencies) | bundle (copied into the wheel)
#   --local-version L    PEP 440 local label (default: "cpu" for a CPU build, none for CUDA; "" for none)
#   --no-isolation       build with this Python's setuptools>=68 and wheel instead of fetching them
#   --no-smoke           build and inspect only
#   --model FILE         GGUF for the smoke test (default: a tiny random-weight one, scripts/random_gguf.py)
#   --wheelhouse DIR     the dependencies' wheels for the offline install (default: pip download them)
# Writes to DIST_DIR: the wheel, wheel-info.json (tag, sizes, dependencies), auditwheel.txt, smoke.json.
# The smoke test installs the wheel into a new venv with `pip install --no-index`, then runs
# scripts/wheel_smoke.py there with LLCUDA_OFFLINE=1, a minimal environment, and no network at all
# (its own network namespace with only loopback) where `unshare -n` is allowed.
# PYTHON picks the interpreter (default: .venv/bin/python, else python3).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
PREFIX="" DIST_DIR="$REPO/dist" CUDA_LIBS=pypi LOCAL=auto SMOKE=1 MODEL="" WHEELHOUSE="" BUILD_ARGS=() UI=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --out) DIST_DIR="$2"; shift 2 ;;
        --cuda-libs) CUDA_LIBS="$2"; shift 2 ;;
        --local-version) LOCAL="$2"; shift 2 ;;
        --no-isolation) BUILD_ARGS+=(--no-isolation); shift ;;
        --no-smoke) SMOKE=0; shift ;;
        --no-ui) UI=0; shift ;;
        --model) MODEL="$2"; shift 2 ;;
        --wheelhouse) WHEELHOUSE="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_wheel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
mkdir -p "$DIST_DIR"
DIST_DIR="$(cd "$DIST_DIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/llcuda-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say() { echo "build_wheel: $*" >&2; }

# 1. the binaries: a given prefix, or the CPU build (cached by scripts/build_binaries.py)
if [[ -z "$PREFIX" ]]; then
    PREFIX="$("$PY" "$REPO/scripts/build_binaries.py" | tail -n 1)"
fi
say "prefix $PREFIX"
UI_ARGS=()
if [[ "$UI" == 1 && ! -f "$PREFIX/share/llcuda/ui/index.html" ]]; then
    say "building the chat page (scripts/build_binaries.py --ui-only; cached)"
    ui_prefix="$("$PY" "$REPO/scripts/build_binaries.py" --ui-only | tail -n 1)"
    UI_ARGS=(--ui-dir "$ui_prefix/share/llcuda/ui")
fi

# 2. a source tree with llcuda/binaries, a derived pyproject.toml and the tag; then the wheel
"$PY" "$REPO/scripts/prepare_binaries.py" --prefix "$PREFIX" --stage "$WORK/src" \
    --cuda-libs "$CUDA_LIBS" --local-version "$LOCAL" "${UI_ARGS[@]}" >/dev/null
if ! (cd "$WORK" && "$PY" -m build --wheel "${BUILD_ARGS[@]}" --outdir "$WORK/dist" "$WORK/src") \
        >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    exit 1
fi
built=("$WORK"/dist/*.whl)
WHEEL="$DIST_DIR/$(basename "${built[0]}")"
cp "${built[0]}" "$WHEEL"

# 3. what is in it: tag, sizes, and auditwheel's independent verdict
"$PY" - "$WORK/src/wheel-info.json" "$WHEEL" "$DIST_DIR/wheel-info.json" <<'PY'
import json, os, sys, zipfile
info = json.load(open(sys.argv[1]))
wheel = sys.argv[2]
with zipfile.ZipFile(wheel) as zf:
    info["wheel_file"] = os.path.basename(wheel)
    info["wheel_bytes"] = os.path.getsize(wheel)
    info["installed_bytes"] = sum(i.file_size for i in zf.infolist())
    info["files"] = len(zf.infolist())
json.dump(info, open(sys.argv[3], "w"), indent=2)
print(f"build_wheel: {info['wheel_file']}: {info['wheel_bytes'] / 1e6:.1f} MB "
      f"({info['installed_bytes'] / 1e6:.1f} MB installed), needs glibc {info['needs_glibc']}, "
      f"libstdc++ GLIBCXX {info['needs_glibcxx']}", file=sys.stderr)
PY
if "$PY" -c "import auditwheel" 2>/dev/null; then
    "$PY" -m auditwheel show "$WHEEL" >"$DIST_DIR/auditwheel.txt" 2>&1 || true
    say "auditwheel: $(tr '\n' ' ' <"$DIST_DIR/auditwheel.txt" | grep -o 'consistent with the following platform tag: "[^"]*"' || echo 'see auditwheel.txt')"
fi
echo "$WHEEL"
[[ "$SMOKE" == 1 ]] || exit 0

# 4. a fresh venv with nothing but the wheel and its dependencies, installed offline
if [[ -z "$MODEL" ]]; then
    vocab="$("$PY" "$REPO/scripts/llama_source.py" 2>/dev/null | tail -n 1)/models"
    MODEL="$("$PY" "$REPO/scripts/random_gguf.py" "$WORK/tiny.gguf" --vocab-dir "$vocab")"
fi
if [[ -z "$WHEELHOUSE" ]]; then
    WHEELHOUSE="$WORK/wheelhouse"
    "$PY" -m pip download --quiet --disable-pip-version-check --dest "$WHEELHOUSE" "$WHEEL"
fi
mkdir -p "$WORK/own" && cp "$WHEEL" "$WORK/own/"   # the only llcuda the offline installs can see
find_links=(--find-links "$WORK/own" --find-links "$WHEELHOUSE")
"$PY" -m venv "$WORK/venv"

isolated=0
if unshare -n true 2>/dev/null && command -v ip >/dev/null; then isolated=1; fi
offline() {  # no network but loopback where a network namespace is allowed; LLCUDA_OFFLINE=1 either way
    if [[ $isolated == 1 ]]; then unshare -n sh -c 'ip link set lo up && exec "$@"' sh "$@"; else "$@"; fi
}
say "fresh venv, offline install (own network namespace: $([[ $isolated == 1 ]] && echo yes || echo no))"
mkdir -p "$WORK/home"
clean_env=(env -i "PATH=/usr/local/bin:/usr/bin:/bin" "HOME=$WORK/home" "LLCUDA_HOME=$WORK/home/llcuda"
           "LLCUDA_OFFLINE=1" "HF_HUB_OFFLINE=1" "LLCUDA_NETWORK_ISOLATED=$isolated" "TMPDIR=$WORK")
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then clean_env+=("CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"); fi
offline "${clean_env[@]}" "$WORK/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-index "${find_links[@]}" "$WHEEL"

# 5. the real thing, from the installed wheel: bootstrap, RUNPATH, inference, damage and repair
cd "$WORK"
status=0
offline "${clean_env[@]}" "$WORK/venv/bin/python" -I "$REPO/scripts/wheel_smoke.py" --model "$MODEL" \
    --report "$DIST_DIR/smoke.json" "${find_links[@]}" || status=$?
"$PY" - "$DIST_DIR/smoke.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    print(r["error"], file=sys.stderr)
inf = r.get("inference", {})
print(f"build_wheel: smoke: source={r.get('source')} tokens={inf.get('tokens_generated')} "
      f"text={inf.get('text')!r} failures={r.get('failures')}", file=sys.stderr)
PY
exit "$status"
