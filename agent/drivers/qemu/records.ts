// One JSON record per QEMU VM under <stateDir>/qemu/records/, written before anything is
// made on the host, so a restarted agent can adopt the VM (QEMU's PID and sockets are in
// here) or clean it up.
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { ProcessRef } from "../../../common/run.js";
import type { VmCreateSpec } from "../driver.js";
import { shortId } from "../sandbox/names.js";
import type { Accel } from "./argv.js";
import type { VmPaths } from "./names.js";

export interface QemuRecord {
  spec: VmCreateSpec;
  tap: string;
  paths: VmPaths;
  /** The shared base image the overlay is layered over. */
  base: string;
  /** The QEMU process while it runs (or until its death is reported). */
  qemu?: ProcessRef;
  accel?: Accel;
  /** Why the last start failed, when it did. */
  failure?: string;
}

export class QemuRecords {
  constructor(private readonly dir: string) {
    mkdirSync(dir, { recursive: true });
  }

  private file(id: string): string {
    return join(this.dir, `${shortId(id)}.json`);
  }

  get(id: string): QemuRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.file(id), "utf8")) as QemuRecord;
    } catch {
      return undefined;
    }
  }

  put(r: QemuRecord): void {
    const f = this.file(r.spec.id);
    writeFileSync(`${f}.tmp`, JSON.stringify(r, null, 2));
    renameSync(`${f}.tmp`, f);
  }

  delete(id: string): void {
    rmSync(this.file(id), { force: true });
  }

  all(): QemuRecord[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith(".json"))
      .flatMap((f) => {
        try {
          return [JSON.parse(readFileSync(join(this.dir, f), "utf8")) as QemuRecord];
        } catch {
          return [];
        }
      });
  }
}
