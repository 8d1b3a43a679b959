#!/usr/bin/env bash
# Builds sentinel/docker-cli:local: Debian's docker CLI (docker.io's
# /usr/bin/docker) with the libraries `ldd` lists, on sentinel/busybox:local.
# Idempotent; nothing is pulled.
set -euo pipefail
cd "$(dirname "$0")/.."
cli=/usr/bin/docker
[ -x "$cli" ] || { echo "docker-cli-image: $cli is missing (apt-get install docker.io)" >&2; exit 1; }
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp images/docker-cli/Dockerfile "$ctx/"
mkdir -p "$ctx/root/usr/bin"
cp "$cli" "$ctx/root/usr/bin/docker"
# Each library at its own path, and the dynamic loader.
for lib in $(ldd "$cli" | grep -o '/[^ ]*'); do
  mkdir -p "$ctx/root$(dirname "$lib")"
  cp -L "$lib" "$ctx/root$lib"
done
log=$(mktemp)
docker build -q -t sentinel/docker-cli:local "$ctx" >/dev/null 2>"$log" || { cat "$log" >&2; rm -f "$log"; exit 1; }
rm -f "$log"
