#!/usr/bin/env bash
# Makes this machine's Docker ready for the Swarm executor, idempotently:
# its daemon gives every container no-new-privileges (API 1.41 services
# cannot ask for it, and a Swarm stage refuses to run without it), and it
# becomes a one-node swarm advertised on 127.0.0.1 unless it is in a swarm
# already (then it is left as it is).
set -euo pipefail

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null; then sudo "$@"; else echo "swarm: run as root to: $*" >&2; exit 1; fi
  else
    "$@"
  fi
}

cfg=/etc/docker/daemon.json
if ! jq -e '."no-new-privileges" == true' "$cfg" >/dev/null 2>&1; then
  echo "swarm: setting no-new-privileges in $cfg and restarting dockerd"
  need_root mkdir -p /etc/docker
  if [ -s "$cfg" ]; then
    jq '. + {"no-new-privileges": true}' "$cfg" | need_root tee "$cfg.new" >/dev/null
  else
    echo '{"no-new-privileges": true}' | need_root tee "$cfg.new" >/dev/null
  fi
  need_root mv "$cfg.new" "$cfg"
  if command -v systemctl >/dev/null && systemctl is-active --quiet docker 2>/dev/null; then
    need_root systemctl restart docker
  else
    pid=$(pgrep -x dockerd | head -1 || true)
    if [ -n "$pid" ]; then
      need_root kill "$pid"
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    fi
    need_root sh -c 'nohup dockerd >/var/log/sentinel-dockerd.log 2>&1 &'
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "swarm: dockerd did not come back; see /var/log/sentinel-dockerd.log" >&2; exit 1; }
fi

state=$(docker info --format '{{.Swarm.LocalNodeState}}')
if [ "$state" = inactive ]; then
  docker swarm init --advertise-addr 127.0.0.1 >/dev/null
  echo "swarm: this Docker engine is now a one-node swarm"
fi
