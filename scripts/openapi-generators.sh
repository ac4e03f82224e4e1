#!/bin/sh
# Checks that third-party generators accept openapi/openapi.json (issue 14): the Python
# client of openapi-python-client (PyPI) and the TypeScript types of openapi-typescript
# (npm), each compiled/imported after generation. Installs both into a scratch folder.
set -eu
cd "$(dirname "$0")/.."
SPEC="$PWD/openapi/openapi.json"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/muster-gen.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

echo "openapi-generators: openapi-python-client" >&2
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check openapi-python-client
"$WORK/venv/bin/openapi-python-client" generate --path "$SPEC" --output-path "$WORK/py" >"$WORK/py.log" 2>&1 \
    || { cat "$WORK/py.log" >&2; echo "openapi-generators: openapi-python-client refused the document" >&2; exit 1; }
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check -e "$WORK/py"
"$WORK/venv/bin/python" - <<'PY'
from muster_client import AuthenticatedClient
from muster_client.api.tasks import tasks_create, tasks_get
from muster_client.api.schedules import schedules_create
from muster_client.models import NewTask
t = NewTask(kind="resize")
assert t.to_dict()["kind"] == "resize"
print("openapi-generators: the generated Python client imports and builds a NewTask")
PY

echo "openapi-generators: openapi-typescript" >&2
mkdir "$WORK/ts"
cd "$WORK/ts"
npm init -y >/dev/null
npm install --silent --no-audit --no-fund openapi-typescript@7 typescript@5 >/dev/null
npx --no-install openapi-typescript "$SPEC" -o api.d.ts >/dev/null
cat > check.ts <<'TS'
import type { paths, components } from "./api";
type Created = paths["/v1/tasks"]["post"]["responses"]["201"]["content"]["application/json"];
const state: Created["state"] = "pending";
const problem: components["schemas"]["Problem"] = { type: "t", title: "T", status: 409, detail: "d", code: "lease_conflict" };
console.log(state, problem.code);
TS
npx --no-install tsc --noEmit --strict check.ts
echo "openapi-generators: passed" >&2
