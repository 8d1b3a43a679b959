#!/usr/bin/env bash
# The demo: sets up the machine, builds sentinel, runs the example pipeline
# in Docker containers and shows where its results are.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p sentinel
bin=target/debug/sentinel
# The demo's secret: every form of it is masked in logs and documents.
export DEMO_TOKEN="demo-token-$(date +%s)"
"$bin" -C examples/demo run
echo
"$bin" -C examples/demo runs -n 5
echo
"$bin" -C examples/demo show last
echo
# Containers and WebAssembly steps together (jq-pluck plucks a key that stays masked).
"$bin" -C examples/steps run -v
echo
echo "Open the results: $(pwd)/examples/demo/.sentinel/results and $(pwd)/examples/steps/.sentinel/results"
echo "(runs/index.json, run/<id>/run.json, <stage>.json/.log/.zip)"
