#!/usr/bin/env bash
# Every test: sets up the machine (Docker, the stage image), checks
# formatting and lints, then runs the whole workspace's tests against the
# real Docker engine. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace
