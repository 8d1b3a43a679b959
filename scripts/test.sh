#!/usr/bin/env bash
# Every test: sets up the machine (Docker, the stage image, the steps, the S3
# server, Chromium), builds the web app, checks formatting and lints (the
# host workspace and the web app), then runs the whole workspace's tests
# against the real Docker engine, S3 server, server process and browser.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
scripts/setup.sh
scripts/build-web.sh
cargo fmt --all --check
cargo fmt --manifest-path web/Cargo.toml --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy --manifest-path web/Cargo.toml --target wasm32-unknown-unknown --quiet -- -D warnings
cargo test --workspace
