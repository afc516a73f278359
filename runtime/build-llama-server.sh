#!/usr/bin/env bash
# Build the native llama-server from the llama.cpp sources vendored in the pinned
# llama-cpp-python sdist, and cache the binary outside the repository.
# Usage: runtime/build-llama-server.sh [--cuda]
# Prints the path of the binary on its last line. A cached binary is reused.
# Offline (no pip download): LLAMARIG_LLAMA_CPP_SRC=an extracted vendor/llama.cpp folder.
# LLAMARIG_CMAKE_ARGS adds cmake arguments, e.g. "-DCMAKE_CUDA_ARCHITECTURES=90-real" to build
# for one GPU generation only (minutes instead of an hour of nvcc).
set -Eeuo pipefail
. "$(dirname "$0")/fail-line.sh"
here=$(cd "$(dirname "$0")" && pwd)
version=$(cat "$here/LLAMA_CPP_PYTHON_VERSION")
flavour=cpu
cmake_extra=()
if [ "${1:-}" = "--cuda" ]; then flavour=cuda; cmake_extra=(-DGGML_CUDA=ON); fi
cache=${LLAMARIG_CACHE:-$HOME/.cache/llamarig}
out="$cache/llama-server-$version-$flavour"
if [ -x "$out/bin/llama-server" ]; then echo "$out/bin/llama-server"; exit 0; fi
work="$cache/build-$version-$flavour"
rm -rf "$work"; mkdir -p "$work"
src=${LLAMARIG_LLAMA_CPP_SRC:-}
if [ -z "$src" ]; then
  # pip keeps downloaded sdists in its cache too, so a second download is local.
  python3 -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
  tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
  src="$work/llama_cpp_python-$version/vendor/llama.cpp"
fi
read -r -a cmake_user <<< "${LLAMARIG_CMAKE_ARGS:-}"
# The UI flags stop the build from fetching web assets, which fails offline.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "${cmake_extra[@]}" "${cmake_user[@]}" >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2
mkdir -p "$out/bin"
cp "$work/build/bin/llama-server" "$out/bin/llama-server.tmp"
mv "$out/bin/llama-server.tmp" "$out/bin/llama-server"
rm -rf "$work"
echo "$out/bin/llama-server"
