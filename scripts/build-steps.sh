#!/usr/bin/env bash
# Builds the bundled WebAssembly steps and the sandbox's test guests for
# wasm32-wasip2 (in a target folder of their own) and lays them out as
# steps/dist/<name>/{step.wasm,step.toml}, where the host finds them.
set -euo pipefail
cd "$(dirname "$0")/.."
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
CARGO_TARGET_DIR=steps/target cargo build --quiet --release --target wasm32-wasip2 --manifest-path steps/Cargo.toml
out=steps/target/wasm32-wasip2/release
dist=steps/dist
rm -rf "$dist.tmp" && mkdir -p "$dist.tmp/guests"
for step in http jq-pluck notify s3sync; do
  mkdir -p "$dist.tmp/$step"
  cp "$out/$step.wasm" "$dist.tmp/$step/step.wasm"
  cp "steps/$step/step.toml" "$dist.tmp/$step/step.toml"
done
for guest in steps/test-guests/src/bin/*.rs; do
  name=$(basename "$guest" .rs)
  mkdir -p "$dist.tmp/guests/$name"
  cp "$out/$name.wasm" "$dist.tmp/guests/$name/step.wasm"
  cp steps/test-guests/step.toml "$dist.tmp/guests/$name/step.toml"
done
rm -rf "$dist" && mv "$dist.tmp" "$dist"
echo "build-steps: $(ls "$dist" | grep -v guests | tr '\n' ' ')and $(ls "$dist/guests" | wc -l) test guests in $dist"
