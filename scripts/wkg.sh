#!/usr/bin/env bash
# The reference Wasm OCI client the step registry's interop test compares
# Sentinel with: `wkg` (the bytecodealliance wasm-pkg-tools), pinned,
# installed once per machine.
set -euo pipefail
version=0.16.1
if ! wkg --version 2>/dev/null | grep -q " $version\$"; then
  echo "wkg: installing wkg $version (several minutes, once per machine)" >&2
  cargo install wkg --version "$version" --locked --quiet
fi
