#!/usr/bin/env bash
# Builds Sentinel's server image, sentinel/server:local, from what is built
# on this machine — the sentinel binary (the target folder's debug build, or the one named by
# SENTINEL_BIN), the web app (dist/) and the bundled steps (steps/dist) —
# on the Debian base made by scripts/debian-base.sh: nothing is downloaded
# inside the build. Idempotent (Docker's layer cache).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SENTINEL_BIN:-${CARGO_TARGET_DIR:-target}/debug/sentinel}
for need in "$bin" dist/index.html steps/dist/jq-pluck/step.wasm; do
  [ -e "$need" ] || { echo "server-image: $need is missing (build it first: cargo build -p sentinel, scripts/build-web.sh, scripts/build-steps.sh)" >&2; exit 1; }
done
scripts/debian-base.sh
ctx=target/server-image
rm -rf "$ctx"
mkdir -p "$ctx/steps"
cp images/server/Dockerfile "$ctx/"
cp "$bin" "$ctx/sentinel"
cp -r dist "$ctx/web"
for s in steps/dist/*/; do
  name=$(basename "$s")
  [ "$name" = guests ] || cp -r "$s" "$ctx/steps/$name"
done
log=$(mktemp)
if ! docker build -q -t sentinel/server:local "$ctx" >"$log" 2>&1; then cat "$log" >&2; rm -f "$log"; exit 1; fi
rm -f "$log"
echo "server-image: sentinel/server:local ($(du -sh "$ctx" | cut -f1) of context)" >&2
