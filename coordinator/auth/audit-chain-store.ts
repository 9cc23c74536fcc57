// A Store decorator that links every audit event into the hash chain inside
// the transaction that writes it. Repositories keep writing their audit
// event as one more put in their own transaction (VmRepo, NetworkRepo, ...);
// this layer fills in seq/prev_hash/hash, adds a compare on the chain head
// and a put of the new head. So the event, the change it records and the
// chain advance commit together or not at all, and one chain order holds
// across coordinators.
//
// A failed transaction is retried here only when the head moved (another
// audit write won); if the head is unchanged, the caller's own compares
// failed and the caller sees { succeeded: false } as before. The head this
// store last wrote is kept, so a process writing alone reads it only once.
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { AuditChainHead } from "../../gen/noid/v1/records.js";
import { NoidError } from "../../common/errors.js";
import type { Compare, KeyValue, ListOptions, Op, Store, TxnResult } from "../store/store.js";
import { keys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { GENESIS, linkEvents, type ChainPoint } from "./audit-chain.js";

export const chainKeys = {
  head: "auditchain/head",
  anchor: "auditchain/anchor",
} as const;

const MAX_ATTEMPTS = 50;

export function isAuditPut(op: Op): op is Extract<Op, { type: "put" }> {
  return op.type === "put" && op.key.startsWith(keys.auditPrefix);
}

export function headOf(kv: KeyValue | undefined): ChainPoint {
  return kv ? dec(AuditChainHead, kv.value) : GENESIS;
}

/** Pure: the ops with their audit puts linked after `head`, plus the new head. */
export function linkOps(head: ChainPoint, ops: readonly Op[]): { ops: Op[]; head: ChainPoint } {
  const audits = ops.filter(isAuditPut).map((op) => dec(AuditEvent, op.value));
  const linked = linkEvents(head, audits);
  let i = 0;
  const out = ops.map((op): Op => (isAuditPut(op) ? { ...op, value: enc(AuditEvent, linked.events[i++]!) } : op));
  return { ops: out, head: linked.head };
}

async function jitter(attempt: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.min(20, 2 ** attempt) * Math.random()));
}

export class AuditChainStore implements Store {
  constructor(private readonly inner: Store) {}

  get(key: string) {
    return this.inner.get(key);
  }
  list(prefix: string, opts?: ListOptions) {
    return this.inner.list(prefix, opts);
  }
  delete(key: string) {
    return this.inner.delete(key);
  }
  watch(...a: Parameters<Store["watch"]>) {
    return this.inner.watch(...a);
  }
  grantLease(ttl: number, opts?: { dedicated?: boolean }) {
    return this.inner.grantLease(ttl, opts);
  }
  leaseTimeToLive(id: number) {
    return this.inner.leaseTimeToLive(id);
  }
  compact(rev: number) {
    return this.inner.compact(rev);
  }
  revision() {
    return this.inner.revision();
  }
  answeredWithin(ms: number): boolean {
    return this.inner.answeredWithin?.(ms) ?? false;
  }
  close() {
    return this.inner.close();
  }

  async put(key: string, value: Uint8Array, opts?: { lease?: number }): Promise<number> {
    const op: Op = { type: "put", key, value, ...(opts?.lease ? { lease: opts.lease } : {}) };
    if (!isAuditPut(op)) return this.inner.put(key, value, opts);
    const r = await this.txn([], [op]);
    return r.revision;
  }

  /**
   * The chain head as this store last wrote or read it. Only a guess: every transaction
   * compares the head's revision, so a stale guess costs one failed attempt, after which
   * the head is read. Saves a read per audited write while this process is the writer.
   */
  private head: { point: ChainPoint; modRevision: number } | undefined;

  async txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    if (!success.some(isAuditPut)) return this.inner.txn(compares, success, failure);
    // Failure ops would also run when only the head moved: nobody needs them with audit events, so refuse.
    if (failure.length > 0) throw new NoidError("INTERNAL", "audit events cannot be written in a transaction with failure ops");
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const head = this.head ?? (await this.readHead());
      const linked = linkOps(head.point, success);
      let r: TxnResult;
      try {
        r = await this.inner.txn(
          [...compares, { key: chainKeys.head, target: "mod", op: "==", value: head.modRevision }],
          [...linked.ops, { type: "put", key: chainKeys.head, value: enc(AuditChainHead, linked.head) }],
        );
      } catch (e) {
        this.head = undefined;
        throw e;
      }
      if (r.succeeded) {
        this.head = { point: linked.head, modRevision: r.revision };
        return r;
      }
      const now = await this.readHead();
      if (now.modRevision === head.modRevision) return r;
      await jitter(attempt);
    }
    throw new NoidError("UNAVAILABLE", "writing an audit event: the audit chain is too contended, retry");
  }

  private async readHead(): Promise<{ point: ChainPoint; modRevision: number }> {
    this.head = undefined;
    const kv = await this.inner.get(chainKeys.head);
    const h = { point: headOf(kv), modRevision: kv?.modRevision ?? 0 };
    this.head = h;
    return h;
  }
}
