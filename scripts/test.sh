#!/bin/sh
# Sets up (redis-server from Debian when missing) and runs the whole test suite.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ensure-redis.sh
cargo build --quiet --bins
exec cargo test --quiet "$@"
