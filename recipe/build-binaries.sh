#!/usr/bin/env bash
# Build llama.cpp's tools and shared libraries into $PREFIX.
#
# The one build script of llcuda: the conda recipe (recipe/recipe.yaml) runs it
# unchanged, and so does scripts/build_binaries.py for local and CI builds.
#
# Inputs (environment):
#   SRC_DIR              llama.cpp source tree (the folder holding CMakeLists.txt),
#                        or a folder whose llama.cpp/ subfolder is that tree (the PyPI sdist layout)
#   PREFIX               install prefix; binaries go to $PREFIX/bin, libraries to $PREFIX/lib
#   LLAMA_BUILD_NUMBER   llama.cpp build number (the pin, e.g. 11434)
#   LLCUDA_CUDA          ON to build the CUDA backend, OFF (default) for CPU only
#   LLCUDA_CUDA_ARCHS    CMAKE_CUDA_ARCHITECTURES (default: T4 through H100)
#   LLCUDA_CUDA_NCCL     ON to link NCCL for multi-GPU tensor split (default OFF)
#   LLCUDA_CPU_ISA       x86-64 CPU baseline: "avx2" (default, Haswell and newer) or "baseline"
#   LLCUDA_BUILD_DIR     CMake build folder (default: $SRC_DIR/build-llcuda)
#   CPU_COUNT            parallel jobs (default: nproc)
#   LLCUDA_EXTRA_CMAKE_ARGS  extra CMake arguments, space separated
#   LLCUDA_UI            the browser chat page (llama.cpp's tools/ui, a Svelte app): ON builds it with npm
#                        (`npm ci` + `npm run build`; needs Node.js >= 20.19, npm and the npm registry) and
#                        installs its static files into $PREFIX/share/llcuda/ui; "only" builds just the page,
#                        not llama.cpp; OFF (default) builds no page
#   LLCUDA_UI_BUILD_DIR  the page's npm work folder, kept between builds (default: $BUILD_DIR/ui): npm ci
#                        reruns only when the lockfile changed, the page only when its sources did
# Uses ccache when it is on PATH (CCACHE_BASEDIR is set so moved trees still hit).
set -euo pipefail

: "${PREFIX:?PREFIX must name the install prefix}"
: "${SRC_DIR:?SRC_DIR must name the llama.cpp source tree}"
: "${LLAMA_BUILD_NUMBER:?LLAMA_BUILD_NUMBER must be set (the pinned llama.cpp build)}"

if [[ -f "$SRC_DIR/llama.cpp/CMakeLists.txt" ]]; then
    SRC_DIR="$SRC_DIR/llama.cpp"
fi
if [[ ! -f "$SRC_DIR/CMakeLists.txt" ]]; then
    echo "build-binaries.sh: no CMakeLists.txt in $SRC_DIR; point SRC_DIR at the llama.cpp tree" >&2
    exit 2
fi

LLCUDA_CUDA="${LLCUDA_CUDA:-OFF}"
LLCUDA_CUDA_ARCHS="${LLCUDA_CUDA_ARCHS:-75-real;80-real;86-real;89-real;90-real;90-virtual}"
LLCUDA_CPU_ISA="${LLCUDA_CPU_ISA:-avx2}"
LLCUDA_UI="${LLCUDA_UI:-OFF}"
BUILD_DIR="${LLCUDA_BUILD_DIR:-$SRC_DIR/build-llcuda}"
JOBS="${CPU_COUNT:-$(nproc)}"
case "$LLCUDA_CPU_ISA" in
    avx2|baseline) ;;
    *) echo "build-binaries.sh: LLCUDA_CPU_ISA must be avx2 or baseline, not '$LLCUDA_CPU_ISA'" >&2; exit 2 ;;
esac
case "$LLCUDA_UI" in
    ON|OFF|only) ;;
    *) echo "build-binaries.sh: LLCUDA_UI must be ON, OFF or only, not '$LLCUDA_UI'" >&2; exit 2 ;;
esac

# The chat page: llama.cpp's own build embeds it gzipped into llama-server (LLAMA_BUILD_UI, kept OFF
# below); llcuda installs the plain files instead, so that any server can serve them from a folder
# (llama-server --path, llcuda serve).
build_ui() {
    local ui_src="$SRC_DIR/tools/ui"
    local work="${LLCUDA_UI_BUILD_DIR:-$BUILD_DIR/ui}"
    local dest="$PREFIX/share/llcuda/ui"
    if [[ ! -f "$ui_src/package.json" ]]; then
        echo "build-binaries.sh: no $ui_src/package.json; this llama.cpp tree has no web UI to build" >&2
        exit 2
    fi
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        echo "build-binaries.sh: LLCUDA_UI=$LLCUDA_UI needs Node.js >= 20.19 and npm on PATH" \
             "(conda: nodejs; Debian: apt-get install nodejs npm), or LLCUDA_UI=OFF" >&2
        exit 2
    fi
    # Vite 7 needs Node.js ^20.19 or >= 22.12, and the page's .npmrc sets engine-strict.
    if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number);
                  process.exit(a > 22 || (a === 22 && b >= 12) || (a === 20 && b >= 19) ? 0 : 1)'; then
        echo "build-binaries.sh: Node.js $(node --version) is too old for the web UI (needs ^20.19 or" \
             ">= 22.12); install a newer one or build with LLCUDA_UI=OFF" >&2
        exit 2
    fi
    mkdir -p "$work/src"
    # The sources, the Node.js version and the build number decide the page; same stamp, same files.
    local stamp
    stamp="$( (cd "$ui_src" && find . \( -name node_modules -o -name dist \) -prune -o -type f -print0 \
                | LC_ALL=C sort -z | xargs -0 sha256sum; node --version; echo "$LLAMA_BUILD_NUMBER") \
              | sha256sum | cut -c1-16)"
    if [[ -f "$work/dist/index.html" && "$(cat "$work/dist.stamp" 2>/dev/null)" == "$stamp" ]]; then
        echo "build-binaries.sh: web UI up to date in $work/dist"
    else
        # A fresh copy of the sources beside the kept node_modules: the build writes icons and
        # SvelteKit's state into its tree, which must not be the (shared, read-only) source tree.
        find "$work/src" -mindepth 1 -maxdepth 1 ! -name node_modules -exec rm -rf {} +
        (cd "$ui_src" && tar --exclude=./node_modules --exclude=./dist -cf - .) | (cd "$work/src" && tar -xf -)
        if ! cmp -s "$work/src/package-lock.json" "$work/installed-lock.json"; then
            (cd "$work/src" && npm ci --no-audit --no-fund)
            cp "$work/src/package-lock.json" "$work/installed-lock.json"
        fi
        rm -rf "$work/dist" "$work/dist.stamp"
        (cd "$work/src" && LLAMA_UI_OUT_DIR="$work/dist" LLAMA_BUILD_NUMBER="b$LLAMA_BUILD_NUMBER" \
            LLAMA_UI_VERSION="b$LLAMA_BUILD_NUMBER" npm run build)
        if [[ ! -f "$work/dist/index.html" ]]; then
            echo "build-binaries.sh: npm run build left no index.html in $work/dist" >&2
            exit 1
        fi
        echo "$stamp" >"$work/dist.stamp"
    fi
    rm -rf "$dest"
    mkdir -p "$dest"
    cp -R "$work/dist/." "$dest/"
    echo "build-binaries.sh: web UI installed into $dest ($(find "$dest" -type f | wc -l) files)"
}

if [[ "$LLCUDA_UI" == "only" ]]; then
    build_ui
    exit 0
fi

# CMake target names; the installed names are the same, except ggml-rpc-server,
# which is installed as rpc-server (its name in llama.cpp's docs) with a ggml-rpc-server link.
TOOLS=(llama-server llama-cli llama-bench llama-batched-bench llama-quantize llama-embedding ggml-rpc-server)

cmake_args=(
    -S "$SRC_DIR" -B "$BUILD_DIR" -G Ninja
    -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_INSTALL_PREFIX="$PREFIX"
    -DCMAKE_INSTALL_LIBDIR=lib
    -DCMAKE_INSTALL_RPATH='$ORIGIN/../lib'
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON
    -DBUILD_SHARED_LIBS=ON
    -DGGML_NATIVE=OFF
    -DGGML_RPC=ON
    -DLLAMA_BUILD_NUMBER="$LLAMA_BUILD_NUMBER"
    -DLLAMA_BUILD_TESTS=OFF
    -DLLAMA_BUILD_EXAMPLES=ON
    -DLLAMA_BUILD_TOOLS=ON
    -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_UI=OFF
    -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF
    -DLLAMA_LLGUIDANCE=OFF
    # Decided here, not detected from the build machine: RDMA for RPC would make libggml-rpc need
    # libibverbs, which no llcuda package declares (a build on a host with rdma-core found it).
    -DGGML_RPC_RDMA=OFF
)

case "$(uname -m)" in
    x86_64)
        if [[ "$LLCUDA_CPU_ISA" == "avx2" ]]; then
            cmake_args+=(-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
        else
            cmake_args+=(-DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF)
        fi
        ;;
esac

cuda_version=""
if [[ "$LLCUDA_CUDA" == "ON" ]]; then
    cmake_args+=(
        -DGGML_CUDA=ON
        -DCMAKE_CUDA_ARCHITECTURES="$LLCUDA_CUDA_ARCHS"
        -DGGML_CUDA_FA=ON
        # NCCL only speeds up split_mode=tensor across GPUs; off unless asked for, so that a build
        # does not silently need libnccl because the build machine had it (LLCUDA_CUDA_NCCL=ON).
        -DGGML_CUDA_NCCL="${LLCUDA_CUDA_NCCL:-OFF}"
    )
    nvcc_bin="${CUDACXX:-$(command -v nvcc || true)}"
    if [[ -n "$nvcc_bin" ]]; then
        cmake_args+=(-DCMAKE_CUDA_COMPILER="$nvcc_bin")
        cuda_version="$("$nvcc_bin" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
    fi
else
    cmake_args+=(-DGGML_CUDA=OFF)
fi

if command -v ccache >/dev/null 2>&1; then
    export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$SRC_DIR}"
    export CCACHE_NOHASHDIR=1
    cmake_args+=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
    [[ "$LLCUDA_CUDA" == "ON" ]] && cmake_args+=(-DCMAKE_CUDA_COMPILER_LAUNCHER=ccache)
fi

if [[ -n "${LLCUDA_EXTRA_CMAKE_ARGS:-}" ]]; then
    read -r -a extra <<<"$LLCUDA_EXTRA_CMAKE_ARGS"
    cmake_args+=("${extra[@]}")
fi

# A conda-build/rattler-build environment passes its own toolchain flags in CMAKE_ARGS.
if [[ -n "${CMAKE_ARGS:-}" ]]; then
    read -r -a conda_args <<<"$CMAKE_ARGS"
    cmake_args+=("${conda_args[@]}")
fi

started=$(date +%s)
cmake "${cmake_args[@]}"
cmake --build "$BUILD_DIR" --parallel "$JOBS" --target "${TOOLS[@]}"
built_seconds=$(( $(date +%s) - started ))

mkdir -p "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/share/llcuda" "$PREFIX/share/licenses/llama.cpp"
for tool in "${TOOLS[@]}"; do
    installed_name="${tool/#ggml-rpc-server/rpc-server}"
    install -m 0755 "$BUILD_DIR/bin/$tool" "$PREFIX/bin/$installed_name"
done
ln -sf rpc-server "$PREFIX/bin/ggml-rpc-server"
# Shared libraries (libggml*, libllama*, libmtmd*): copy files and keep symlinks as symlinks.
shopt -s nullglob
for lib in "$BUILD_DIR"/bin/lib*.so*; do
    cp -P "$lib" "$PREFIX/lib/"
done
shopt -u nullglob
install -m 0644 "$SRC_DIR/LICENSE" "$PREFIX/share/licenses/llama.cpp/LICENSE"
if [[ "$LLCUDA_UI" == "ON" ]]; then
    build_ui
fi
# llcuda's own log filter (llcuda_log.c, next to this script; rattler-build runs a copy of the script and
# sets RECIPE_DIR): libllama's debug lines stop in C instead of reaching llcuda's Python callback.
# shellcheck disable=SC2086  # CFLAGS/LDFLAGS are word lists
"${CC:-cc}" ${CFLAGS:-} -O2 -fPIC -shared -Wl,-soname,libllcuda-log.so ${LDFLAGS:-} \
    -o "$PREFIX/lib/libllcuda-log.so" "${RECIPE_DIR:-$(dirname "${BASH_SOURCE[0]}")}/llcuda_log.c"

archs_json="[]"
if [[ "$LLCUDA_CUDA" == "ON" ]]; then
    archs_json="[$(tr ';' '\n' <<<"$LLCUDA_CUDA_ARCHS" | sed 's/.*/"&"/' | paste -sd, -)]"
fi
backend=$([[ "$LLCUDA_CUDA" == "ON" ]] && echo cuda || echo cpu)
# Flags naming the install prefix are left out: a moved or relocated prefix would make them wrong.
flags_json="[$(printf '%s\n' "${cmake_args[@]:5}" | grep '^-D' | grep -vF "$PREFIX" | sed 's/\\/\\\\/g; s/"/\\"/g; s/.*/"&"/' | paste -sd, -)]"
cat >"$PREFIX/share/llcuda/build-info.json" <<JSON
{
  "llama_cpp_build": $LLAMA_BUILD_NUMBER,
  "backend": "$backend",
  "cuda_version": "${cuda_version}",
  "cuda_archs": $archs_json,
  "cpu_isa": "$LLCUDA_CPU_ISA",
  "machine": "$(uname -m)",
  "tools": [$(printf '"%s",' "${TOOLS[@]/#ggml-rpc-server/rpc-server}" | sed 's/,$//')],
  "cmake_flags": $flags_json,
  "ui": $([[ "$LLCUDA_UI" == "ON" ]] && echo true || echo false),
  "build_seconds": $built_seconds
}
JSON
echo "build-binaries.sh: installed ${#TOOLS[@]} tools into $PREFIX (backend=$backend, ${built_seconds}s)"
