#!/usr/bin/env bash
# Make the CPU image's base where no image registry is reachable: a minimal Debian bookworm from
# Debian's archive (debootstrap, about 25 s), imported as local/debian:bookworm. Root only.
# Skipped when the daemon already holds it. The archive is the one apt on this host uses
# (runtime/debian-mirror.sh: deb822 or one-line sources, else Debian's default), unless
# DEBIAN_MIRROR names another. Talks to the daemon $DOCKER_HOST names.
set -Eeuo pipefail
. "$(dirname "$0")/fail-line.sh"
name=${1:-local/debian:bookworm}
if docker image inspect "$name" >/dev/null 2>&1; then echo "$name"; exit 0; fi
mirror=${DEBIAN_MIRROR:-$("$(dirname "$0")/debian-mirror.sh")}
echo "docker-base: debootstrap bookworm from $mirror" >&2
root=$(mktemp -d)
at_exit 'rm -rf "$root"'
debootstrap --variant=minbase bookworm "$root" "$mirror" >&2
tar -C "$root" -c . | docker import - "$name" >&2
echo "$name"
