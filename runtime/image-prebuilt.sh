#!/usr/bin/env bash
# Fill prebuilt/ for the CPU image's fast path (Dockerfile, --build-arg ENGINES_FROM=prebuilt):
# the native llama-server this host built, and a wheelhouse of every Python package the image
# installs, at the versions .venv holds (pip reuses its cache: llama-cpp-python is not rebuilt).
# Needs runtime/setup.sh done. Prints the folder on its last line.
set -Eeuo pipefail
. "$(dirname "$0")/fail-line.sh"
cd "$(dirname "$0")/.."
out=prebuilt
rm -rf "$out/bin" "$out/wheels"
mkdir -p "$out/bin" "$out/wheels"
install -m 755 "$(runtime/build-llama-server.sh | tail -n 1)" "$out/bin/llama-server"
pins=$(mktemp)
at_exit 'rm -f "$pins"'
.venv/bin/python -m pip freeze --exclude-editable > "$pins"
# setuptools and wheel: the image builds llamarig itself offline, without build isolation.
.venv/bin/python -m pip wheel -q --wheel-dir "$out/wheels" --constraint "$pins" . 'setuptools>=68' wheel
rm -f "$out"/wheels/llamarig-*.whl  # the image builds it from src/; a wheel here would go stale
echo "$(cd "$out" && pwd)"
