#!/bin/sh
# Python SDK tests: installs the package and pytest from PyPI into sdk/python/.venv,
# then runs the suite against a redis-server (from PATH) and a real `muster serve`
# that the tests start themselves.
#
#   sdk/python/test.sh [pytest args]      MUSTER_BIN=path/to/muster (default:
#                                         <repo>/target/debug/muster, from `cargo build --bins`)
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
MUSTER_BIN=${MUSTER_BIN:-$repo/target/debug/muster}
export MUSTER_BIN
PYTHON=${PYTHON:-python3}
venv=${VENV:-$here/.venv}

if [ ! -x "$MUSTER_BIN" ]; then
    echo "sdk/python/test.sh: no muster binary at $MUSTER_BIN (run cargo build --bins or set MUSTER_BIN)" >&2
    exit 1
fi
if ! command -v redis-server >/dev/null 2>&1; then
    echo "sdk/python/test.sh: redis-server is not on PATH" >&2
    exit 1
fi

# A venv keeps the system Python untouched (Debian refuses `pip install` outside one).
if [ ! -x "$venv/bin/python" ]; then
    if ! "$PYTHON" -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "sdk/python/test.sh: python3 -m venv failed; installing python3-venv" >&2
            apt-get install -y -q python3-venv >/dev/null 2>&1 ||
                { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q python3-venv >/dev/null; }
            "$PYTHON" -m venv "$venv"
        else
            echo "sdk/python/test.sh: python3 -m venv failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[test]"

cd "$here"
exec "$venv/bin/python" -m pytest -q "$@"
