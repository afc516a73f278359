#!/usr/bin/env bash
# The Dockerfile's engine steps (build stage), one per call: `server`, `packages`, `llamarig`.
# ENGINES_FROM=source compiles llama.cpp here, with CUDA when ENGINE=cuda (needs the network).
# ENGINES_FROM=prebuilt takes the host's CPU builds from prebuilt/ (runtime/image-prebuilt.sh)
# and installs every Python package from its wheelhouse, with no network.
set -Eeuo pipefail
. "$(dirname "$0")/fail-line.sh"
step=$1
venv=/opt/venv
die() { echo "image-engines: $*" >&2; exit 1; }
cmake_args=""
[ "$ENGINE" = cuda ] && cmake_args="-DGGML_CUDA=on"
case "$ENGINES_FROM:$step" in
  source:server)
    flag=""; [ "$ENGINE" = cuda ] && flag=--cuda
    python3 -m venv "$venv"
    server=$(PATH="$venv/bin:$PATH" LLAMARIG_CACHE=/tmp/engines runtime/build-llama-server.sh $flag | tail -n 1)
    install -m 755 "$server" "$venv/bin/llama-server" && rm -rf /tmp/engines ;;
  prebuilt:server)
    [ "$ENGINE" = cpu ] || die "prebuilt engines are this host's CPU builds: add --build-arg ENGINE=cpu"
    [ -x prebuilt/bin/llama-server ] || die "prebuilt/bin/llama-server is missing: run runtime/image-prebuilt.sh first"
    python3 -m venv "$venv"
    install -m 755 prebuilt/bin/llama-server "$venv/bin/llama-server" ;;
  source:packages) ;;  # `pip install .` below resolves them from the registry
  prebuilt:packages)
    "$venv/bin/pip" install -q --no-cache-dir --no-index prebuilt/wheels/*.whl ;;
  source:llamarig)
    CMAKE_ARGS="$cmake_args" "$venv/bin/pip" install -q --no-cache-dir . ;;
  prebuilt:llamarig)
    "$venv/bin/pip" install -q --no-cache-dir --no-index --no-deps --no-build-isolation . ;;
  *) die "unknown ENGINES_FROM=$ENGINES_FROM or step $step (ENGINES_FROM: source or prebuilt)" ;;
esac
