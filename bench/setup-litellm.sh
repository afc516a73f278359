#!/usr/bin/env bash
# LiteLLM's proxy for the proxy benchmark only, in its own environment (bench/.venv-litellm,
# git-ignored) so that it never touches llamarig's dependencies. Keeps pip's cache.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
[ -x "$here/.venv-litellm/bin/python" ] || "$python" -m venv "$here/.venv-litellm"
"$here/.venv-litellm/bin/pip" install --quiet 'litellm[proxy]'
"$here/.venv-litellm/bin/litellm" --version
