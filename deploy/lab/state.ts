// The lab's state file: written before anything is created, so that destroyLab can
// clean up after a crash, including processes started in the lab (by recorded PID).
import { mkdirSync, readFileSync, renameSync, rmSync, rmdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProcessRef } from "../../common/run.js";

export const LAB_RUN_DIR = "/run/noid-lab";

export interface LabState {
  prefix: string;
  subnet: string;
  hosts: number;
  outside: boolean;
  processes: (ProcessRef & { argv: string[] })[];
}

export const labDir = (prefix: string): string => join(LAB_RUN_DIR, prefix);
const stateFile = (prefix: string): string => join(labDir(prefix), "state.json");

export function writeLabState(s: LabState): void {
  // A lab removed at the same moment may rmdir the shared parent between the two mkdirs.
  for (let i = 0; ; i++) {
    try {
      mkdirSync(labDir(s.prefix), { recursive: true });
      break;
    } catch (e) {
      if (i >= 3 || (e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
  }
  const tmp = `${stateFile(s.prefix)}.tmp`;
  writeFileSync(tmp, JSON.stringify(s, null, 2));
  renameSync(tmp, stateFile(s.prefix));
}

export function readLabState(prefix: string): LabState | undefined {
  try {
    return JSON.parse(readFileSync(stateFile(prefix), "utf8")) as LabState;
  } catch {
    return undefined;
  }
}

/** Removes the lab's directory, and the shared parent once no other lab has one there. */
export function removeLabDir(prefix: string): void {
  rmSync(labDir(prefix), { recursive: true, force: true });
  try {
    rmdirSync(LAB_RUN_DIR);
  } catch {
    // Another lab's directory is there (ENOTEMPTY), or it is gone already.
  }
}
