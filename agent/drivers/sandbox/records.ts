// One JSON record per sandbox VM under <stateDir>/sandbox/, written before the VM's kernel
// objects are created, so that a restarted agent can adopt it or clean it up.
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProcessRef } from "../../../common/run.js";
import type { VmCreateSpec } from "../driver.js";
import { shortId } from "./names.js";

export interface SandboxRecord {
  spec: VmCreateSpec;
  netns: string;
  hostPort: string;
  /** The VM's cgroup directories (one for v2, one per controller hierarchy for v1), when limits are enforced. */
  cgroups?: string[];
  /** The VM's init process while it runs. */
  init?: ProcessRef;
  /** The v1 freezer cgroup directory, once the VM was paused (see freezer.ts). */
  freezer?: string;
}

export class RecordStore {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  private file(id: string): string {
    return join(this.dir, `${shortId(id)}.json`);
  }

  get(id: string): SandboxRecord | undefined {
    try {
      return upgrade(JSON.parse(readFileSync(this.file(id), "utf8")) as SandboxRecord & { cgroup?: string });
    } catch {
      return undefined;
    }
  }

  put(r: SandboxRecord): void {
    const f = this.file(r.spec.id);
    writeFileSync(`${f}.tmp`, JSON.stringify(r, null, 2));
    renameSync(`${f}.tmp`, f);
  }

  delete(id: string): void {
    rmSync(this.file(id), { force: true });
  }

  all(): SandboxRecord[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith(".json"))
      .map((f) => {
        try {
          return upgrade(JSON.parse(readFileSync(join(this.dir, f), "utf8")) as SandboxRecord & { cgroup?: string });
        } catch {
          return undefined;
        }
      })
      .filter((r): r is SandboxRecord => r !== undefined);
  }
}

/** Records of earlier versions name one cgroup v2 directory as `cgroup`. */
function upgrade(r: SandboxRecord & { cgroup?: string }): SandboxRecord {
  const { cgroup, ...rest } = r;
  return cgroup !== undefined && rest.cgroups === undefined ? { ...rest, cgroups: [cgroup] } : rest;
}
