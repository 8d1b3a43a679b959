#!/usr/bin/env bash
# Installs and starts what Sentinel needs on a fresh Debian machine, idempotently:
# Docker (docker.io), Debian's static busybox, jq (the reference the jq-pluck
# step is compared with), a running dockerd, the local stage image
# sentinel/busybox:local (built FROM scratch; nothing is pulled), and the
# WebAssembly steps (the wasm32-wasip2 target, then scripts/build-steps.sh),
# the S3 server, two image registries on loopback, and `wkg`.
set -euo pipefail
cd "$(dirname "$0")/.."

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo "$@"; else echo "setup: run as root to: $*" >&2; exit 1; fi
  else
    "$@"
  fi
}

missing=()
for pkg in docker.io busybox-static jq curl git wrk chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  need_root sh -c 'nohup dockerd >/var/log/sentinel-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/sentinel-dockerd.log" >&2; exit 1; }
fi

# The Swarm executor's one-node swarm (and the daemon's no-new-privileges).
scripts/swarm.sh

# busybox-static installs a statically linked /bin/busybox: it runs in a FROM scratch image.
install -m 0755 /bin/busybox images/busybox/busybox
log=$(mktemp)
docker build -q -t sentinel/busybox:local images/busybox >/dev/null 2>"$log" || { cat "$log" >&2; exit 1; }
rm -f "$log"
# The image the scoped Docker endpoint's tests run (Debian's docker CLI), and
# the Debian base the Bundling example builds on (debootstrap, once per machine).
scripts/docker-cli-image.sh
scripts/debian-base.sh
echo "setup: docker $(docker version --format '{{.Server.Version}}') (API $(docker version --format '{{.Server.APIVersion}}')), image sentinel/busybox:local ready"

scripts/build-steps.sh
# The S3 server the tests and the demo use (Garage on loopback; installed once).
scripts/s3-server.sh >/dev/null
# The image registries the tests and the demo push to (loopback only).
scripts/registry.sh >/dev/null
# wkg: the Wasm OCI client the step registry is checked against.
scripts/wkg.sh
