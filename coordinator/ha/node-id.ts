// A replica's id in the leader election: random once, then kept in
// <state_dir>/node-id so a restarted replica recognises its own leader key.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { hostname } from "node:os";
import { join } from "node:path";

export function nodeIdOf(stateDir: string): string {
  const file = join(stateDir, "node-id");
  if (existsSync(file)) {
    const id = readFileSync(file, "utf8").trim();
    if (id) return id;
  }
  const id = `${hostname()}-${randomBytes(6).toString("hex")}`;
  writeFileSync(file, id + "\n", { mode: 0o600 });
  return id;
}
