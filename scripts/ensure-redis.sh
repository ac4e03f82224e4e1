#!/bin/sh
# Installs redis-server (with redis-cli, which the Cluster tests use to create clusters;
# Sentinels are `redis-server --sentinel`) from Debian's packages when it is not on PATH,
# and openssl (the TLS test makes its certificates with it).
set -eu
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "openssl not found: installing Debian's openssl package" >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null 2>&1 || {
    $SUDO apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl >/dev/null
  }
fi
if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server or redis-cli not found: installing Debian's redis-server package" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq redis-server redis-tools >/dev/null
# The package starts a system-wide service; muster starts its own private servers.
$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
command -v redis-server >/dev/null 2>&1 || {
  echo "error: could not install redis-server; install it (apt-get install redis-server) and retry" >&2
  exit 1
}
