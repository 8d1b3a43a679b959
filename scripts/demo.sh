#!/usr/bin/env bash
# The demo: sets up the machine, builds sentinel, runs the example pipeline
# in Docker containers and shows where its results are.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-web.sh
cargo build -p sentinel
bin=${CARGO_TARGET_DIR:-target}/debug/sentinel
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
# Steps through a registry: the bundled steps publish themselves to the OCI
# registry on loopback (the same version again replaces their bytes: a
# rebuilt step), then a pipeline pulls them by version, pins them in
# sentinel.lock, and runs again from the cache with --locked.
for step in http jq-pluck notify s3sync; do
  "$bin" step publish "steps/dist/$step" --to oci://127.0.0.1:5000/sentinel-steps --force
done
rm -f examples/registry/sentinel.lock
XDG_CONFIG_HOME="$PWD/examples/registry/config" "$bin" -C examples/registry run -v
cat examples/registry/sentinel.lock
XDG_CONFIG_HOME="$PWD/examples/registry/config" "$bin" -C examples/registry run --locked
echo
# A dockercise file, unchanged (the seed's example on local images), and
# what it is as a sentinel.yml.
(cd examples/dockercise && AWS_DEFAULT_REGION=eu-west-1 "../../$bin" run -v dockercise.yml)
echo
"$bin" convert examples/dockercise/dockercise.yml | head -20
echo "…"
echo
# A wercker.yml, unchanged: the build pipeline's steps in one container (a
# wercker step folder among them), then the deploy from the build's output.
(
  cd examples/wercker
  export SENTINEL_STEPS_PATH="$PWD/steps"
  "../../$bin" run -v
  build=$("../../$bin" show last --json | jq -r .run.id)
  "../../$bin" run -v --pipeline deploy --deploy-target production --from-run "$build"
)
echo
# Bundling's image chain: a base FROM a debootstrapped Debian, a compiler
# FROM the base (by digest) that builds a wheel, a runner FROM the compiler
# that installs and runs it; all pushed to the registry on loopback, whose
# tags for the app the last stage lists.
"$bin" -C examples/bundling run -v -e PYTHON_VERSION=3.11 -e PACKAGE=hello-bundling -e VERSION=0.4.0
echo

# Publishing: s3sync to the S3 server on loopback, notify to a loopback webhook.
eval "$(scripts/s3-server.sh)"
export S3_ENDPOINT S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
python3 scripts/webhook-receiver.py 127.0.0.1:8765 &
receiver=$!
trap 'kill $receiver 2>/dev/null || true' EXIT
export NOTIFY_URL=http://127.0.0.1:8765/hooks/demo
sleep 0.5
"$bin" -C examples/publish run -v
echo "published site: curl -H 'Host: $S3_BUCKET.web.localhost' http://127.0.0.1:3902/publish-demo/index.html"
curl -s -H "Host: $S3_BUCKET.web.localhost" http://127.0.0.1:3902/publish-demo/index.html
echo
echo "Open the results: $(pwd)/examples/{demo,steps,registry,dockercise,wercker,bundling,publish}/.sentinel/results"
echo "(runs/index.json, run/<id>/run.json, <stage>.json/.log/.zip)"
echo
# The server: sentinel serve on the embedded default, the demo pipeline
# triggered through its HTTP API.
scripts/demo-server.sh
echo
# Deploys: a build's marker in the bucket, found by a second server's watcher.
scripts/demo-deploy.sh
