#!/usr/bin/env bash
# Celery with Redis, the queue a Python user would pick instead of the work layer: installed
# only for bench/work.py's comparison (Debian's redis-server, Celery in its own venv).
set -euo pipefail
cd "$(dirname "$0")"
command -v redis-server >/dev/null || { sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get install -y -qq redis-server >/dev/null; }
[ -x .venv-celery/bin/python ] || python3 -m venv .venv-celery
.venv-celery/bin/pip install -q "celery[redis]==5.*"
echo "celery: $(.venv-celery/bin/celery --version)"
