#!/usr/bin/env bash
# A real S3 server on loopback for tests and the demo: Garage (installed with
# cargo on first use, ~15 min on 2 cores), one node, one bucket, one key.
# Idempotent: reuses a running server. Prints the settings to use, as
# shell assignments (eval "$(scripts/s3-server.sh)").
#   S3 API      http://127.0.0.1:3900 (region "garage", path-style)
#   website     http://127.0.0.1:3902 (Host: <bucket>.web.localhost)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${SENTINEL_S3_DIR:-/tmp/sentinel-garage}
bucket=${SENTINEL_S3_BUCKET:-sentinel-results}
garage=${GARAGE:-$HOME/.cargo/bin/garage}

if [ ! -x "$garage" ]; then
  echo "s3-server: installing garage 2.5.0 (once per machine)" >&2
  cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite >&2
fi

mkdir -p "$root/meta" "$root/data"
conf="$root/garage.toml"
if [ ! -f "$conf" ]; then
  cat > "$conf" <<CONF
metadata_dir = "$root/meta"
data_dir = "$root/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:3901"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

[s3_api]
api_bind_addr = "127.0.0.1:3900"
s3_region = "garage"
root_domain = ".s3.localhost"

[s3_web]
bind_addr = "127.0.0.1:3902"
root_domain = ".web.localhost"
index = "index.html"
CONF
fi
g() { "$garage" -c "$conf" "$@"; }

if ! g status >/dev/null 2>&1; then
  nohup "$garage" -c "$conf" server >"$root/server.log" 2>&1 &
  for _ in $(seq 1 60); do g status >/dev/null 2>&1 && break; sleep 0.5; done
  g status >/dev/null 2>&1 || { echo "s3-server: garage did not start; see $root/server.log" >&2; exit 1; }
fi
if g status 2>/dev/null | grep -q "NO ROLE ASSIGNED"; then
  node=$(g node id -q | cut -d@ -f1)
  g layout assign -z dc1 -c 1G "$node" >/dev/null
  g layout apply --version "$(( $(g layout show 2>/dev/null | sed -n 's/.*Current cluster layout version: \([0-9]*\).*/\1/p' | head -1) + 1 ))" >/dev/null
fi
g bucket info "$bucket" >/dev/null 2>&1 || g bucket create "$bucket" >/dev/null
if [ ! -f "$root/key" ]; then
  g key create sentinel-key > "$root/key"
fi
key_id=$(sed -n 's/.*Key ID: *//p' "$root/key" | head -1)
secret=$(sed -n 's/.*Secret key: *//p' "$root/key" | head -1)
g bucket allow --read --write --owner "$bucket" --key "$key_id" >/dev/null
g bucket website --allow "$bucket" >/dev/null 2>&1 || true
echo "S3_ENDPOINT=http://127.0.0.1:3900"
echo "S3_REGION=garage"
echo "S3_BUCKET=$bucket"
echo "AWS_ACCESS_KEY_ID=$key_id"
echo "AWS_SECRET_ACCESS_KEY=$secret"
# The bucket website: GET http://$S3_WEBSITE/<key> with Host: <bucket>.web.localhost
echo "S3_WEBSITE=127.0.0.1:3902"
