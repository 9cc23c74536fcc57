// The audit log in etcd: audit/<sortable time>-<random> -> AuditEvent.
// Events that record a state change are written in that change's
// transaction (VmRepo, NetworkRepo, UserRepo); the rest go through here.
// Every event is linked into a hash chain by AuditChainStore (the store this
// log and the repositories write through), so order is by seq, not by key.
import { randomBytes } from "node:crypto";
import { AuditEvent } from "../gen/noid/v1/audit.js";
import { AuditChainAnchor } from "../gen/noid/v1/records.js";
import { NoidError } from "../common/errors.js";
import type { Compare, Op, Store } from "./store/store.js";
import { keys } from "./state/keys.js";
import { dec, enc } from "./state/codec.js";
import { GENESIS, verifyChain, type ChainPoint, type ChainVerdict } from "./auth/audit-chain.js";
import { chainKeys, headOf } from "./auth/audit-chain-store.js";

export interface Clock {
  now(): Date;
}

export type AuditInput = Omit<AuditEvent, "id" | "time" | "seq" | "prevHash" | "hash">;

/** Keys sort by time: 13-digit ms timestamp, then randomness for uniqueness. */
export function auditKey(at: Date): string {
  return `${String(at.getTime()).padStart(13, "0")}-${randomBytes(4).toString("hex")}`;
}

/** The put that records `e` inside another transaction; the chain store links it. */
export function auditPut(e: AuditInput, at: Date): Op {
  const id = auditKey(at);
  return { type: "put", key: keys.audit(id), value: enc(AuditEvent, { ...e, id, time: at, seq: 0, prevHash: "", hash: "" }) };
}

/** etcd's default limit is 128 operations per transaction. */
const TRIM_BATCH = 100;

export class AuditLog {
  /** `store` must be the AuditChainStore-wrapped store: writes through it are linked. */
  constructor(
    private readonly store: Store,
    private readonly clock: Clock,
    private readonly enabled: boolean,
  ) {}

  async write(e: AuditInput): Promise<void> {
    if (!this.enabled) return;
    const op = auditPut(e, this.clock.now());
    const r = await this.store.txn([], [op]);
    if (!r.succeeded) throw new NoidError("UNAVAILABLE", `writing audit event ${e.event} failed`);
  }

  private async all(): Promise<{ key: string; modRevision: number; event: AuditEvent }[]> {
    const r = await this.store.list(keys.auditPrefix);
    return r.kvs
      .map((kv) => ({ key: kv.key, modRevision: kv.modRevision, event: dec(AuditEvent, kv.value) }))
      .sort((a, b) => (a.event.seq ?? 0) - (b.event.seq ?? 0) || a.key.localeCompare(b.key));
  }

  /** Newest first. */
  async list(filter: { limit: number; user?: string; vm?: string; event?: string }): Promise<AuditEvent[]> {
    const all = await this.all();
    const out: AuditEvent[] = [];
    for (let i = all.length - 1; i >= 0 && out.length < filter.limit; i--) {
      const ev = all[i]!.event;
      if (filter.user && ev.user !== filter.user) continue;
      if (filter.vm && ev.vm !== filter.vm) continue;
      if (filter.event && ev.event !== filter.event) continue;
      out.push(ev);
    }
    return out;
  }

  async anchor(): Promise<ChainPoint> {
    const kv = await this.store.get(chainKeys.anchor);
    return kv ? dec(AuditChainAnchor, kv.value) : GENESIS;
  }

  /** Walks the whole retained chain. */
  async verify(): Promise<ChainVerdict> {
    const [anchor, headKv, all] = await Promise.all([this.anchor(), this.store.get(chainKeys.head), this.all()]);
    return verifyChain({ anchor, head: headOf(headKv), events: all.map((a) => a.event) });
  }

  /**
   * Deletes the oldest events beyond `keep`, in batches. Each batch moves the
   * anchor to the newest event it deletes, in the same transaction, so the
   * oldest retained event stays verifiable.
   */
  async trim(keep: number): Promise<number> {
    // Counted first: reading (and decoding) every event blocks the process for ~100 ms at
    // 10,000 events, and until the log is over its bound there is nothing to trim.
    if ((await this.store.list(keys.auditPrefix, { keysOnly: true, limit: 1 })).count <= keep) return 0;
    const all = await this.all();
    const excess = Math.max(0, all.length - keep);
    let deleted = 0;
    while (deleted < excess) {
      const batch = all.slice(deleted, Math.min(excess, deleted + TRIM_BATCH));
      const last = batch.at(-1)!.event;
      const anchorKv = await this.store.get(chainKeys.anchor);
      const compares: Compare[] = [
        { key: chainKeys.anchor, target: "mod", op: "==", value: anchorKv?.modRevision ?? 0 },
        // Anchor exactly what we read: an event changed since is not silently blessed.
        ...batch.map((b): Compare => ({ key: b.key, target: "mod", op: "==", value: b.modRevision })),
      ];
      const ops: Op[] = [
        ...batch.map((b): Op => ({ type: "delete", key: b.key })),
        { type: "put", key: chainKeys.anchor, value: enc(AuditChainAnchor, { seq: last.seq ?? 0, hash: last.hash ?? "" }) },
      ];
      const r = await this.store.txn(compares, ops);
      if (!r.succeeded) break; // another coordinator trims too, or the log changed: next round
      deleted += batch.length;
    }
    return deleted;
  }
}
