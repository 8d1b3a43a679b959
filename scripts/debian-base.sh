#!/usr/bin/env bash
# Builds sentinel/debian-base:local once per machine: a minimal Debian
# (bookworm) made with debootstrap from Debian's packages, with Python 3,
# pip, setuptools and wheel, git and CA certificates, imported into Docker.
# The Bundling example's base image and Sentinel's own server image start
# FROM it (nothing is pulled from a registry). Idempotent: nothing happens
# when the image of this recipe (its label) exists.
set -euo pipefail
cd "$(dirname "$0")/.."
image=sentinel/debian-base:local
recipe=2
if [ "$(docker image inspect -f '{{index .Config.Labels "dev.sentinel.base"}}' "$image" 2>/dev/null)" = "$recipe" ]; then
  exit 0
fi
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo "$@"; else echo "debian-base: run as root to: $*" >&2; exit 1; fi
  else
    "$@"
  fi
}
if ! command -v debootstrap >/dev/null; then
  echo "debian-base: installing debootstrap" >&2
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=${SENTINEL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'need_root rm -rf "$root"' EXIT
echo "debian-base: debootstrap bookworm from $mirror (once per machine)" >&2
log=$(mktemp)
if ! need_root debootstrap --variant=minbase \
    --include=python3,python3-pip,python3-setuptools,python3-wheel,ca-certificates,git \
    bookworm "$root/rootfs" "$mirror" >"$log" 2>&1; then
  tail -20 "$log" >&2
  exit 1
fi
rm -f "$log"
# No caches in the image.
need_root rm -rf "$root/rootfs/var/cache/apt/archives/"*.deb "$root/rootfs/var/lib/apt/lists/"*
need_root tar -C "$root/rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL dev.sentinel.base=$recipe" - "$image" >/dev/null
echo "debian-base: $image ready" >&2
