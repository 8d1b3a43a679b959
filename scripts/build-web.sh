#!/usr/bin/env bash
# Builds the results web app (Leptos, release) into dist/ with Trunk.
# Installs what it needs when missing, idempotently: the wasm32-unknown-unknown
# target, Trunk 0.21.14 and the wasm-bindgen-cli whose version is exactly the
# wasm-bindgen in web/Cargo.lock (Trunk.toml names it, so Trunk never downloads one).
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target list --installed | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

bindgen=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' web/Cargo.lock)
grep -q "wasm_bindgen = \"$bindgen\"" Trunk.toml \
  || { echo "build-web: Trunk.toml must name wasm-bindgen $bindgen (web/Cargo.lock)" >&2; exit 1; }
if ! wasm-bindgen --version 2>/dev/null | grep -q " $bindgen\$"; then
  echo "build-web: installing wasm-bindgen-cli $bindgen (a few minutes, once)"
  cargo install wasm-bindgen-cli --version "$bindgen" --quiet
fi
if ! trunk --version 2>/dev/null | grep -q " 0.21.14\$"; then
  echo "build-web: installing trunk 0.21.14 (a few minutes, once)"
  cargo install trunk --version 0.21.14 --locked --quiet
fi

CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}" trunk build --release --config Trunk.toml
wasm=$(ls dist/*.wasm)
gz=$(gzip -9c "$wasm" | wc -c)
echo "build-web: dist/ ready: $(basename "$wasm") $(stat -c %s "$wasm") bytes, $gz gzipped"
# The release module's budget: 400 KiB gzipped.
if [ "$gz" -gt $((400 * 1024)) ]; then
  echo "build-web: the gzipped module is $gz bytes, over its 400 KiB budget" >&2
  exit 1
fi
