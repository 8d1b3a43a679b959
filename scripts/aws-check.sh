#!/usr/bin/env bash
# The self-hosting kit's check: lints deploy/aws/sentinel.yaml with cfn-lint,
# deploys it on a local AWS API emulator (moto's server on loopback, with its
# IAM enforcement on) and checks what docs/aws.md says it makes; then runs
# `sentinel run` whose results reach the emulator's S3 through the template's
# role, assumed on the emulator's STS. cfn-lint and moto come from PyPI into a
# virtualenv made once per machine. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${SENTINEL_AWS_VENV:-$HOME/.cache/sentinel/aws-venv}
if ! "$venv/bin/python" -c 'import cfnlint, moto, boto3, flask' 2>/dev/null; then
  echo "aws-check: installing cfn-lint and moto into $venv (once per machine)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "cfn-lint==1.58.0" "moto[server]==5.2.6"
fi
"$venv/bin/cfn-lint" deploy/aws/sentinel.yaml
echo "aws-check: cfn-lint clean" >&2
bin=${SENTINEL_BIN:-${CARGO_TARGET_DIR:-target}/debug/sentinel}
[ -x "$bin" ] || { echo "aws-check: $bin is missing (cargo build -p sentinel)" >&2; exit 1; }
"$venv/bin/python" scripts/aws-check.py "$bin"
