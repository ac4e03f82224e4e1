#!/bin/sh
# sdk/typescript/test.sh: the TypeScript SDK's checks, on any machine with node >= 20
# and npm (a fresh Debian one too):
#   1. npm ci (devDependencies only: typescript, @types/node; from the npm registry);
#   2. dist/ (committed) is what src/ builds to, and the types compile for a user;
#   3. node's test runner against real redis-server and `muster serve` processes;
#   4. `npm pack` gives a tarball that installs and imports in an empty project, with
#      its type declarations.
# Env: MUSTER_BIN (default <repo>/target/debug/muster: run `cargo build --bins` first),
# TEST_CONCURRENCY (test files run at once, default 2). Exits non-zero on any failure.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
cd "$HERE"

say() { printf '[sdk/typescript] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

command -v node >/dev/null 2>&1 || die "node is not installed (need node >= 20)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 20 ] || die "node $(node --version) is too old (need >= 20)"

MUSTER_BIN=${MUSTER_BIN:-$REPO/target/debug/muster}
export MUSTER_BIN
[ -x "$MUSTER_BIN" ] || die "no muster binary at $MUSTER_BIN (cargo build --bins, or set MUSTER_BIN)"
command -v redis-server >/dev/null 2>&1 || die "redis-server is not on PATH (scripts/ensure-redis.sh or apt-get install redis-server)"

say "npm ci"
npm ci --no-audit --no-fund --loglevel=error

say "dist/ is up to date with src/"
node scripts/check-dist.mjs

say "types compile"
npm run -s typecheck

say "tests (muster: $MUSTER_BIN)"
node --test --test-concurrency="${TEST_CONCURRENCY:-2}" test/*.test.mjs

say "npm pack installs and imports"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/muster-sdk-pack.XXXXXX")
trap 'rm -rf "$TMP"' EXIT INT TERM
npm pack --silent --pack-destination "$TMP" >"$TMP/pack.out"
TGZ="$TMP/$(tail -n 1 "$TMP/pack.out")"
[ -f "$TGZ" ] || die "npm pack made no tarball"
mkdir "$TMP/app"
cd "$TMP/app"
printf '{ "name": "app", "version": "1.0.0", "private": true, "type": "module" }\n' >package.json
npm install --no-audit --no-fund --loglevel=error "$TGZ"
[ ! -d node_modules/muster-sdk/node_modules ] || die "the package brought dependencies"
node --input-type=module -e '
  import { Client, Worker, NonRetryable, MusterError, AuthenticationError, TaskContext } from "muster-sdk";
  const ok = [Client, Worker, NonRetryable, MusterError, AuthenticationError, TaskContext].every((x) => typeof x === "function");
  if (!ok) throw new Error("missing exports");
  new Client({ server: "http://127.0.0.1:1", token: "t" });
  new Worker({ server: "http://127.0.0.1:1", queues: ["q"], concurrency: 2 }).task("k", () => 1);
  if (!(new AuthenticationError({ status: 401, code: "c", detail: "d" }) instanceof MusterError)) throw new Error("error classes");
  console.log("import ok");
'
cp "$HERE/test/types/usage.ts" .
node "$HERE/node_modules/typescript/bin/tsc" --noEmit --strict --target ES2022 --module NodeNext \
  --moduleResolution NodeNext --typeRoots "$HERE/node_modules/@types" --types node usage.ts
say "ok"
