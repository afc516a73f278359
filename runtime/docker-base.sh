#!/usr/bin/env bash
# Make the CPU image's base where no image registry is reachable: a minimal Debian bookworm from
# Debian's archive (debootstrap, about 25 s), imported as local/debian:bookworm. Root only.
# Skipped when the daemon already holds it. The archive is the one apt on this host uses,
# unless DEBIAN_MIRROR names another. Talks to the daemon $DOCKER_HOST names.
set -euo pipefail
name=${1:-local/debian:bookworm}
if docker image inspect "$name" >/dev/null 2>&1; then echo "$name"; exit 0; fi
mirror=${DEBIAN_MIRROR:-$(grep -hoE '^(URIs: |deb )https?://[^ ]+/debian/?( |$)' \
  /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -n 1 | awk '{print $2}')}
mirror=${mirror:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
tar -C "$root" -c . | docker import - "$name" >&2
echo "$name"
