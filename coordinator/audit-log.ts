// The audit log in etcd: audit/<sortable time>-<random> -> AuditEvent.
// Events that record a state change are written in that change's
// transaction (VmRepo); the rest go through here.
import { randomBytes } from "node:crypto";
import { AuditEvent } from "../gen/noid/v1/audit.js";
import type { Store } from "./store/store.js";
import { keys } from "./state/keys.js";
import { dec, enc } from "./state/codec.js";

export interface Clock {
  now(): Date;
}

/** Keys sort by time: 13-digit ms timestamp, then randomness for uniqueness. */
export function auditKey(at: Date): string {
  return `${String(at.getTime()).padStart(13, "0")}-${randomBytes(4).toString("hex")}`;
}

export class AuditLog {
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly enabled: boolean,
  ) {}

  async write(e: Omit<AuditEvent, "id" | "time">): Promise<void> {
    if (!this.enabled) return;
    const time = this.clock.now();
    const id = auditKey(time);
    await this.store.put(keys.audit(id), enc(AuditEvent, { ...e, id, time }));
  }

  /** Newest first. */
  async list(filter: { limit: number; user?: string; vm?: string; event?: string }): Promise<AuditEvent[]> {
    const all = await this.store.list(keys.auditPrefix);
    const out: AuditEvent[] = [];
    for (let i = all.kvs.length - 1; i >= 0 && out.length < filter.limit; i--) {
      const ev = dec(AuditEvent, all.kvs[i]!.value);
      if (filter.user && ev.user !== filter.user) continue;
      if (filter.vm && ev.vm !== filter.vm) continue;
      if (filter.event && ev.event !== filter.event) continue;
      out.push(ev);
    }
    return out;
  }

  /** Deletes the oldest events beyond `keep`. */
  async trim(keep: number): Promise<number> {
    const all = await this.store.list(keys.auditPrefix);
    const excess = all.kvs.length - keep;
    for (let i = 0; i < excess; i++) await this.store.delete(all.kvs[i]!.key);
    return Math.max(0, excess);
  }
}
