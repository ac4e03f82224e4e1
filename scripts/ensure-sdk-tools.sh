#!/bin/sh
# Makes sure the SDK suites can run: python3 with venv and pip (sdk/python), node >= 20
# and npm (sdk/typescript). Installs Debian's packages when one is missing; a node older
# than 20 is a clear error (install Node.js 20 from nodejs.org or NodeSource).
set -eu
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
missing=""
command -v python3 >/dev/null 2>&1 || missing="$missing python3"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$missing python3-venv"
command -v node >/dev/null 2>&1 || missing="$missing nodejs"
command -v npm >/dev/null 2>&1 || missing="$missing npm"
if [ -n "$missing" ]; then
  echo "installing Debian's$missing for the SDK suites" >&2
  $SUDO apt-get update -qq >/dev/null || true
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq $missing >/dev/null
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "error: node $(node --version) is too old for sdk/typescript (need >= 20)" >&2
  exit 1
fi
