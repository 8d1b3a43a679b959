#!/usr/bin/env bash
# The server part of the demo: starts `sentinel serve` on the embedded
# default (local results served under /results/, no cloud), makes the demo
# pipeline a git repository it may run, sets the pipeline's secret through
# the server (stored encrypted), triggers a run through the HTTP API, waits
# for it and prints the URLs to look at. The server keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SENTINEL_BIN:-${CARGO_TARGET_DIR:-target}/debug/sentinel}
state=.sentinel-server
port=${SENTINEL_DEMO_PORT:-8080}
mkdir -p "$state"

# Stop a server left by an earlier demo.
if [ -f "$state/server.pid" ] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
  kill "$(cat "$state/server.pid")"
  while kill -0 "$(cat "$state/server.pid")" 2>/dev/null; do sleep 0.2; done
fi

# The demo pipeline as a git repository the server may clone.
repo="$state/repos/demo"
rm -rf "$repo" && mkdir -p "$repo"
cp examples/demo/sentinel.yml "$repo/"
git -C "$repo" init -q --initial-branch=main
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid add .
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid commit -qm "demo pipeline"

[ -f "$state/secrets.key" ] || (umask 077 && "$bin" secret keygen > "$state/secrets.key")

"$bin" --state "$state" serve \
  --listen "127.0.0.1:$port" \
  --repo "demo=file://$(pwd)/$repo" \
  --secrets-key-file "$state/secrets.key" \
  >>"$state/server.log" 2>&1 &
echo $! > "$state/server.pid"
for _ in $(seq 100); do [ -f "$state/server.json" ] && break; sleep 0.1; done
[ -f "$state/server.json" ] || { cat "$state/server.log"; exit 1; }
url=$(jq -r .url "$state/server.json")

# Through the running server: a secret (stdin) and a token.
printf %s "demo-token-$(date +%s)" | "$bin" --state "$state" secret set DEMO_TOKEN
token=$("$bin" --state "$state" token create --name demo --scope trigger)

# Trigger through the HTTP API and wait for the run.
id=$(curl -sf -H "Authorization: Bearer $token" -H 'content-type: application/json' \
  -d '{"repo": "demo", "ref": "main"}' "$url/api/v1/runs" | jq -r .id)
echo "triggered run $id through POST $url/api/v1/runs"
while :; do
  status=$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/runs/$id" | jq -r .run.status)
  case "$status" in queued|running) sleep 0.5 ;; *) break ;; esac
done
echo "run $id $status"
curl -sf -H "Authorization: Bearer $token" "$url/api/v1/runs/$id" \
  | jq -r '.run.stages[] | "  \(.status)\t\(.name)"'
echo
echo "sentinel serve is running at $url (pid $(cat "$state/server.pid"), log $state/server.log)"
echo "  the results web app:    $url/#/run/$id   (sign in with the token below)"
echo "  token (trigger scope):  $token"
echo "  the run:                curl -H 'Authorization: Bearer $token' $url/api/v1/runs/$id"
echo "  its results:            curl -H 'Authorization: Bearer $token' $url/results/run/$id/run.json"
echo "  a stage's log, live:    curl -N -H 'Authorization: Bearer $token' $url/api/v1/runs/$id/stages/report/log/stream"
echo "  the badge:              $url/badge/demo.svg"
echo "  metrics:                curl -H 'Authorization: Bearer $token' $url/metrics"
echo "  stop it:                kill \$(cat $state/server.pid)"
