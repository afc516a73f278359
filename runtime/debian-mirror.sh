#!/usr/bin/env bash
# Print the Debian archive apt uses here (for debootstrap): the first enabled `deb` source whose
# suite is a release (no '-': not -security, -updates, -backports), read as apt reads them:
# APT_DIR/sources.list, then APT_DIR/sources.list.d/*.list (one-line format) and *.sources
# (deb822, Debian 12's own layout) in name order. Only http(s) URIs count (a `mirror+file:` or
# `cdrom:` source is skipped). None found: http://deb.debian.org/debian, said on stderr.
# Usage: runtime/debian-mirror.sh [APT_DIR]   (default /etc/apt)
set -Eeuo pipefail
here=$(dirname "$0")
. "$here/fail-line.sh"
apt_dir=${1:-/etc/apt}
default=http://deb.debian.org/debian
files=()
[ -f "$apt_dir/sources.list" ] && files+=("$apt_dir/sources.list")
export LC_ALL=C  # the glob's order, as apt's
for f in "$apt_dir"/sources.list.d/*; do
  case "$f" in *.list|*.sources) [ -f "$f" ] && files+=("$f") ;; esac
done
mirror=""
[ ${#files[@]} -eq 0 ] || mirror=$(awk -f "$here/debian-mirror.awk" "${files[@]}")
if [ -z "$mirror" ]; then
  echo "debian-mirror: no enabled http(s) Debian release source in $apt_dir (sources.list," \
       "sources.list.d/*.list or *.sources): using $default (DEBIAN_MIRROR chooses another)" >&2
  mirror=$default
fi
echo "$mirror"
