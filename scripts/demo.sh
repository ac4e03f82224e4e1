#!/bin/sh
# Sets up (redis-server from Debian when missing) and runs `muster demo`.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ensure-redis.sh
exec cargo run --release --quiet -- demo "$@"
