// Runs every test (unit, integration with a real etcd, privileged end-to-end)
// and ends with the line "N passed, N failed".
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dir = mkdtempSync(join(tmpdir(), "noid-test-"));
const out = join(dir, "results.json");
const vitest = join(root, "node_modules", ".bin", "vitest");
const args = ["run", "--reporter=default", "--reporter=json", `--outputFile.json=${out}`, ...process.argv.slice(2)];
// Tests are type-checked like the code (vitest only strips types): a test that no longer
// matches the code it exercises is a failure, counted as one.
const tc = spawnSync(join(root, "node_modules", ".bin", "tsc"), ["-p", "tsconfig.test.json"], { cwd: root, stdio: "inherit" });
const typeFailures = tc.status === 0 ? 0 : 1;
if (typeFailures) console.error("type check of the tests failed (tsc -p tsconfig.test.json): counted as one failure");
const r = spawnSync(vitest, args, { cwd: root, stdio: "inherit" });

let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const j = JSON.parse(readFileSync(out, "utf8"));
  passed = j.numPassedTests ?? 0;
  failed = j.numFailedTests ?? 0;
  // A file that failed without any failed test in it (it did not load, or a hook
  // threw) counts as one failure: nothing in it was shown to work.
  for (const f of j.testResults ?? []) {
    const anyFailed = (f.assertionResults ?? []).some((a) => a.status === "failed");
    if (f.status === "failed" && !anyFailed) failed += 1;
  }
  skipped = (j.numPendingTests ?? 0) + (j.numTodoTests ?? 0);
} catch (e) {
  console.error(`could not read test results: ${e.message}`);
  failed = Math.max(failed, 1);
}
rmSync(dir, { recursive: true, force: true });
// A skipped test is not a passing one: count it against the run.
if (skipped > 0) console.log(`${skipped} skipped (counted as failed)`);
failed += typeFailures;
console.log(`${passed} passed, ${failed + skipped} failed`);
process.exit(r.status === 0 && failed + skipped === 0 ? 0 : 1);
