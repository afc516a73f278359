#!/usr/bin/env bash
# Set up a fresh machine: Debian's Prometheus tools and Docker daemon (tests only), a virtual
# environment with llamarig and its engines, the native llama-server, and the generated tiny models.
# Idempotent: a second run reuses pip's wheel cache and the cached llama-server binary.
# Usage: runtime/setup.sh [--with-prometheus] [--with-docker] [--with-browser]
set -Eeuo pipefail
. "$(dirname "$0")/fail-line.sh"
cd "$(dirname "$0")/.."
with_prometheus=false; with_docker=false; with_browser=false
for arg in "$@"; do
  case "$arg" in
    --with-prometheus) with_prometheus=true ;;
    --with-docker) with_docker=true ;;
    --with-browser) with_browser=true ;;
    *) echo "usage: runtime/setup.sh [--with-prometheus] [--with-docker] [--with-browser]" >&2; exit 2 ;;
  esac
done
need=()
if $with_prometheus; then
  command -v promtool >/dev/null && command -v amtool >/dev/null || need+=(prometheus prometheus-alertmanager)
fi
if $with_docker; then  # the image tests: a daemon they start themselves, and a base made offline
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v docker-compose >/dev/null || need+=(docker-compose)  # checks docker-compose.yml (config)
fi
if $with_browser; then  # the console's test: headless Chromium
  command -v chromium >/dev/null || need+=(chromium)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
# llama-cpp-python compiles llama.cpp (~12 min on 2 cores) the first time; pip keeps the wheel.
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test,embedded]'
server=$(runtime/build-llama-server.sh | tail -n 1)
ln -sf "$server" .venv/bin/llama-server
.venv/bin/llamarig models make
echo "set-up done: .venv/bin/llamarig; the engine, .venv/bin/llama-server: $(.venv/bin/llama-server --version 2>&1 | head -n 1)"
