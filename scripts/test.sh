#!/usr/bin/env bash
# Every test: sets up the machine (Docker, the stage image, the steps, the S3
# server, Chromium), builds the web app, checks formatting and lints (the
# host workspace and the web app), builds Sentinel's own server image from
# the binary just built, then runs the whole workspace's tests (every test
# binary, even after one fails) against the real Docker engine, S3 server,
# server process and browser.
# Prints how long each phase took; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"

timings=()
current=""
started=0
phase() {
  current=$1
  shift
  started=$SECONDS
  echo "== $current"
  "$@"
  timings+=("$(printf '%-34s %5ds' "$current" $((SECONDS - started)))")
  current=""
}
report() {
  local code=$?
  echo "== phases"
  for t in "${timings[@]}"; do echo "  $t"; done
  if [ -n "$current" ]; then
    echo "  $(printf '%-34s %5ds  (failed)' "$current" $((SECONDS - started)))"
  fi
  echo "  $(printf '%-34s %5ds' total "$SECONDS")"
  exit "$code"
}
trap report EXIT

phase "set-up (tools, Docker, S3, steps)" scripts/setup.sh
phase "web app" scripts/build-web.sh
phase "format" sh -c 'cargo fmt --all --check && cargo fmt --manifest-path web/Cargo.toml --check'
phase "lints (host)" cargo clippy --workspace --all-targets --quiet -- -D warnings
phase "lints (web app)" cargo clippy --manifest-path web/Cargo.toml --target wasm32-unknown-unknown --quiet -- -D warnings
phase "build the tests" cargo test --workspace --no-run --quiet
phase "server image" scripts/server-image.sh
phase "AWS kit (cfn-lint, emulator)" scripts/aws-check.sh
phase "tests" cargo test --workspace --no-fail-fast
