#!/usr/bin/env bash
# Two real image registries on loopback for tests and the demo: Debian's
# docker-registry (Distribution 2.8), one plain, one behind htpasswd basic
# auth. Idempotent: installs the package once, stops the packaged service
# (it would listen on every interface), reuses servers already answering.
# Docker treats loopback registries as insecure already: no daemon.json edit,
# no daemon restart. Prints the settings to use, as shell assignments
# (eval "$(scripts/registry.sh)").
#   plain       127.0.0.1:5000
#   basic auth  127.0.0.1:5001 (user "sentinel", password in $root/auth/password)
set -euo pipefail
cd "$(dirname "$0")/.."
root=${SENTINEL_REGISTRY_DIR:-/tmp/sentinel-registry}

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo "$@"; else echo "registry: run as root to: $*" >&2; exit 1; fi
  else
    "$@"
  fi
}

missing=()
for pkg in docker-registry apache2-utils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "registry: installing ${missing[*]}" >&2
  need_root apt-get update -qq
  need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packaged service listens on every interface: never leave it running.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  need_root systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

status() { curl -s -o /dev/null -w '%{http_code}' "http://$1/v2/" 2>/dev/null || true; }

# serve NAME ADDR [AUTH]: writes NAME's configuration and starts it unless
# something already answers at ADDR.
serve() {
  local name=$1 addr=$2 auth=${3:-}
  local dir="$root/$name"
  mkdir -p "$dir/data"
  {
    echo "version: 0.1"
    echo "log: {level: warn}"
    echo "storage:"
    echo "  filesystem: {rootdirectory: $dir/data}"
    echo "  delete: {enabled: true}"
    echo "http: {addr: $addr}"
    if [ -n "$auth" ]; then
      echo "auth:"
      echo "  htpasswd: {realm: sentinel-test, path: $dir/htpasswd}"
    fi
  } > "$dir/config.yml"
  case "$(status "$addr")" in
    200|401) return 0 ;;
  esac
  nohup docker-registry serve "$dir/config.yml" > "$dir/registry.log" 2>&1 &
  for _ in $(seq 1 50); do
    case "$(status "$addr")" in
      200|401) return 0 ;;
    esac
    sleep 0.1
  done
  echo "registry: $name did not start on $addr; see $dir/registry.log" >&2
  exit 1
}

mkdir -p "$root/auth"
if [ ! -s "$root/auth/password" ]; then
  (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$root/auth/password")
fi
password=$(cat "$root/auth/password")
htpasswd -Bbc "$root/auth/htpasswd" sentinel "$password" 2>/dev/null
chmod 600 "$root/auth/htpasswd"

serve plain 127.0.0.1:5000
serve auth 127.0.0.1:5001 yes

echo "SENTINEL_TEST_REGISTRY=127.0.0.1:5000"
echo "SENTINEL_TEST_REGISTRY_AUTH=127.0.0.1:5001"
echo "SENTINEL_TEST_REGISTRY_USER=sentinel"
echo "SENTINEL_TEST_REGISTRY_PASSWORD=$password"
