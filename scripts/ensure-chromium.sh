#!/bin/sh
# Installs Debian's chromium and chromium-driver when missing: the web console's
# end-to-end tests (tests/api/ui.rs) drive a real headless Chromium over WebDriver.
set -eu
if command -v chromedriver >/dev/null 2>&1 &&
  { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }; then
  exit 0
fi
echo "chromium/chromedriver not found: installing Debian's chromium and chromium-driver packages" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || true
$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null 2>&1 || {
  echo "error: could not install chromium-driver; install it (apt-get install chromium chromium-driver) and retry" >&2
  exit 1
}
