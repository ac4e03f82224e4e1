#!/bin/sh
# Sets up (redis-server from Debian when missing) and runs the whole test suite.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ensure-redis.sh
sh scripts/ensure-chromium.sh
cargo build --quiet --bins
cargo test --quiet "$@"
# Fuzz the API from its own OpenAPI document (schemathesis from PyPI, ~1 minute).
bash scripts/fuzz.sh
