// Checks that the committed dist/ is what `npm run build` makes from src/ now: builds
// into a temporary directory with the same tsconfig and compares file by file.
// Exit 1 (with the differing files) when dist/ is stale: run `npm run build` and commit.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "muster-sdk-dist-"));
try {
  const tsc = path.join(ROOT, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", path.join(ROOT, "tsconfig.json"), "--outDir", tmp], { stdio: "inherit" });
  const list = (dir) => (fs.existsSync(dir) ? fs.readdirSync(dir, { recursive: true }).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort() : []);
  const want = list(tmp);
  const have = list(path.join(ROOT, "dist"));
  const bad = [];
  for (const f of new Set([...want, ...have])) {
    const a = path.join(tmp, f);
    const b = path.join(ROOT, "dist", f);
    if (!fs.existsSync(a)) bad.push(`${f}: in dist/ but not built from src/`);
    else if (!fs.existsSync(b)) bad.push(`${f}: missing from dist/`);
    else if (!fs.readFileSync(a).equals(fs.readFileSync(b))) bad.push(`${f}: differs from a fresh build`);
  }
  if (bad.length > 0) {
    console.error(`dist/ is stale (run \`npm run build\` in sdk/typescript and commit dist/):\n  ${bad.join("\n  ")}`);
    process.exit(1);
  }
  console.log(`dist/ is up to date with src/ (${want.length} files)`);
} finally {
  fs.rmSync(tmp, { recursive: true, force: true });
}
