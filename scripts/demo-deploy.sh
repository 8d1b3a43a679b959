#!/usr/bin/env bash
# The deploy part of the demo (the artifactory monitor's flow, on
# loopback): a second `sentinel serve` watches the S3 server for deploy
# markers; a build publishes a payload and its marker there with s3sync;
# `/force` makes the watcher look at once; the deploy pipeline submits the
# payload's metadata to a loopback deploy receiver with the http step and a
# bearer token from the server's secret store; then the deployments record
# says what is deployed where. The server keeps running.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${SENTINEL_BIN:-${CARGO_TARGET_DIR:-target}/debug/sentinel}
state=.sentinel-deploy
port=${SENTINEL_DEPLOY_PORT:-8081}
mkdir -p "$state"

if [ -f "$state/server.pid" ] && kill -0 "$(cat "$state/server.pid")" 2>/dev/null; then
  kill "$(cat "$state/server.pid")"
  while kill -0 "$(cat "$state/server.pid")" 2>/dev/null; do sleep 0.2; done
fi

eval "$(scripts/s3-server.sh)"
export S3_ENDPOINT S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

# The deploy service: a loopback receiver.
python3 scripts/webhook-receiver.py 127.0.0.1:8766 &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT

# The deploy pipeline as a repository the server may clone.
repo="$state/repos/deployer"
rm -rf "$repo" && mkdir -p "$repo"
cp examples/deploy/deployer/sentinel.yml "$repo/"
git -C "$repo" init -q --initial-branch=main
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid add .
git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid commit -qm "deploy pipeline"
sed -e "s|@REPO@|$(pwd)/$repo|" -e "s|@BUCKET@|$S3_BUCKET|g" -e "s|@ENDPOINT@|$S3_ENDPOINT|" \
  examples/deploy/server.toml > "$state/server.toml"
[ -f "$state/secrets.key" ] || (umask 077 && "$bin" secret keygen > "$state/secrets.key")

"$bin" --state "$state" serve --config "$state/server.toml" \
  --listen "127.0.0.1:$port" --secrets-key-file "$state/secrets.key" \
  >>"$state/server.log" 2>&1 &
echo $! > "$state/server.pid"
for _ in $(seq 100); do [ -f "$state/server.json" ] && break; sleep 0.1; done
[ -f "$state/server.json" ] || { cat "$state/server.log"; exit 1; }
url=$(jq -r .url "$state/server.json")
printf %s "deploy-token-$(date +%s)" | "$bin" --state "$state" secret set DEPLOY_TOKEN
token=$("$bin" --state "$state" token create --name deploy-demo --scope trigger)

# The build: a payload and its marker, published to the bucket.
VERSION="1.0.$(date +%s)" "$bin" -C examples/deploy/build run -v

# Look now rather than at the next poll.
curl -sf -H "Authorization: Bearer $token" "$url/force" \
  | jq -r '.watchers[] | .new[] | "marker \(.key): \(.outcome) \(.run // .reason // "")"'
while :; do
  status=$(curl -sf -H "Authorization: Bearer $token" "$url/api/v1/deployments?app=billing&limit=1" \
    | jq -r '.deployments[0].status // "none"')
  case "$status" in queued|running|none) sleep 0.5 ;; *) break ;; esac
done
"$bin" --state "$state" deployments --app billing --limit 5
echo
echo "the deploy server runs at $url (pid $(cat "$state/server.pid"), log $state/server.log; token $token)"
