#!/bin/sh
# Installs redis-server from Debian's packages when it is not on PATH.
set -eu
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found: installing Debian's redis-server package" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq redis-server >/dev/null
# The package starts a system-wide service; muster starts its own private servers.
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
command -v redis-server >/dev/null 2>&1 || {
  echo "error: could not install redis-server; install it (apt-get install redis-server) and retry" >&2
  exit 1
}
