// One JSON record per Firecracker VM under <stateDir>/firecracker/records/, written before
// anything is made on the host, so a restarted agent can adopt the VM (its Firecracker PID
// and API socket are in here) or clean it up.
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProcessRef } from "../../../common/run.js";
import type { VmCreateSpec } from "../driver.js";
import { shortId } from "../sandbox/names.js";
import type { ChrootLayout } from "./jailer.js";

export interface FirecrackerRecord {
  spec: VmCreateSpec;
  jailId: string;
  netns: string;
  hostPort: string;
  layout: ChrootLayout;
  /** <stateDir>/firecracker/vms/<short>: console log and checkpoints. */
  vmDir: string;
  hasInitrd: boolean;
  /** The Firecracker process (the jailer execs into it) while it runs. */
  process?: ProcessRef;
  paused?: boolean;
}

export class FirecrackerRecords {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  private file(id: string): string {
    return join(this.dir, `${shortId(id)}.json`);
  }

  get(id: string): FirecrackerRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.file(id), "utf8")) as FirecrackerRecord;
    } catch {
      return undefined;
    }
  }

  put(r: FirecrackerRecord): void {
    const f = this.file(r.spec.id);
    writeFileSync(`${f}.tmp`, JSON.stringify(r, null, 2));
    renameSync(`${f}.tmp`, f);
  }

  delete(id: string): void {
    rmSync(this.file(id), { force: true });
  }

  all(): FirecrackerRecord[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith(".json"))
      .map((f) => {
        try {
          return JSON.parse(readFileSync(join(this.dir, f), "utf8")) as FirecrackerRecord;
        } catch {
          return undefined;
        }
      })
      .filter((r): r is FirecrackerRecord => r !== undefined);
  }
}
