#!/bin/sh
# Sets up (redis-server, chromium, the SDKs' toolchains from Debian when missing; Python
# and npm packages from their registries) and runs the whole test suite: the Rust unit
# and integration tests (the core flows on one server and on a Redis Cluster), the Python and TypeScript SDK suites against a real server,
# third-party client generation from the OpenAPI document, and the OpenAPI fuzz run.
set -eu
cd "$(dirname "$0")/.."
sh scripts/ensure-redis.sh
sh scripts/ensure-chromium.sh
sh scripts/ensure-sdk-tools.sh
cargo build --quiet --bins
cargo test --quiet "$@"
# The core flow suites once more, on a real Redis Cluster (3 primaries, 3 replicas,
# started by the suite): one parametrised suite, not a copy (tests/api/support).
MUSTER_TEST_BACKEND=cluster cargo test --quiet --test api -- store:: flow:: locks:: coord:: schedules:: events:: ui:: shards::a_sharded_queue_spreads
MUSTER_BIN="$PWD/target/debug/muster" sh sdk/python/test.sh
MUSTER_BIN="$PWD/target/debug/muster" sh sdk/typescript/test.sh
sh scripts/openapi-generators.sh
# Fuzz the API from its own OpenAPI document (schemathesis from PyPI, ~1 minute).
bash scripts/fuzz.sh
