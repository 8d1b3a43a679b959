#!/bin/sh
# Provisions the base: the bundles' folders and an unprivileged user.
set -e
. /etc/bundling/base_vars.sh
mkdir -p "$BUNDLING_HOME" "$WHEELHOUSE"
useradd --system --home-dir "$BUNDLING_HOME" --shell /usr/sbin/nologin bundling
