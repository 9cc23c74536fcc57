// The audit log's hash chain, as pure functions: each event carries the
// SHA-256 of the one before it, so editing, deleting or reordering any event
// breaks a link that verifyChain finds. The head (newest seq and hash) lives
// in its own key and every audit write compares it; retention leaves an
// anchor (the newest deleted event's seq and hash) so the oldest retained
// event can still be checked.
import { createHash } from "node:crypto";
import type { AuditEvent } from "../../gen/noid/v1/audit.js";

export interface ChainPoint {
  seq: number;
  hash: string;
}

/** Before the first event: seq 0, no hash. */
export const GENESIS: ChainPoint = { seq: 0, hash: "" };

/**
 * The canonical form hashed: a JSON array in a fixed field order (not the
 * protobuf bytes, whose encoding is not guaranteed stable across libraries).
 */
export function canonical(e: AuditEvent): string {
  return JSON.stringify([
    e.seq ?? 0,
    e.prevHash ?? "",
    e.id,
    e.time ? e.time.toISOString() : "",
    e.event,
    e.user,
    e.vm,
    e.host,
    e.success,
    e.detail,
    e.peer,
  ]);
}

export function eventHash(e: AuditEvent): string {
  return createHash("sha256").update(canonical(e), "utf8").digest("hex");
}

const seqOf = (e: AuditEvent): number => e.seq ?? 0;

/** Links `events` (in order) after `head`; returns them with seq, prevHash and hash set, and the new head. */
export function linkEvents(head: ChainPoint, events: readonly AuditEvent[]): { events: AuditEvent[]; head: ChainPoint } {
  let cur = head;
  const out: AuditEvent[] = [];
  for (const e of events) {
    const seq = cur.seq + 1;
    const unhashed: AuditEvent = { ...e, seq, prevHash: cur.hash, hash: "" };
    const hash = eventHash(unhashed);
    out.push({ ...unhashed, hash });
    cur = { seq, hash };
  }
  return { events: out, head: cur };
}

export type ChainVerdict =
  | { ok: true; checked: number; firstSeq: number; lastSeq: number; headHash: string }
  | { ok: false; checked: number; firstSeq: number; lastSeq: number; headHash: string; brokenSeq: number; brokenId: string; reason: string };

/**
 * Walks the retained events in seq order. `anchor` is what retention left
 * (GENESIS if nothing was ever trimmed), `head` what the chain head key says.
 * Reports the first broken link.
 */
export function verifyChain(input: { anchor: ChainPoint; head: ChainPoint; events: readonly AuditEvent[] }): ChainVerdict {
  const events = [...input.events].sort((a, b) => seqOf(a) - seqOf(b));
  const firstSeq = events[0]?.seq ?? 0;
  const lastSeq = events.at(-1)?.seq ?? 0;
  const base = { firstSeq, lastSeq, headHash: input.head.hash };
  let prev = input.anchor;
  let checked = 0;
  const broken = (e: { seq: number; id: string }, reason: string): ChainVerdict => ({
    ok: false,
    checked,
    ...base,
    brokenSeq: e.seq,
    brokenId: e.id,
    reason,
  });
  for (const ev of events) {
    const e = { ...ev, seq: seqOf(ev), prevHash: ev.prevHash ?? "", hash: ev.hash ?? "" };
    if (e.seq === 0) return broken(e, `event ${e.id} is not linked into the chain (no sequence number)`);
    if (e.seq === prev.seq) return broken(e, `two events claim sequence number ${e.seq}`);
    if (e.seq !== prev.seq + 1) {
      return broken(e, `events ${prev.seq + 1}..${e.seq - 1} are missing before event ${e.seq}`);
    }
    if (e.prevHash !== prev.hash) return broken(e, `event ${e.seq} does not carry the hash of event ${prev.seq}: an earlier event was changed or removed`);
    if (eventHash(e) !== e.hash) return broken(e, `event ${e.seq} was altered: its content does not match its hash`);
    prev = { seq: e.seq, hash: e.hash };
    checked++;
  }
  if (input.head.seq !== prev.seq || input.head.hash !== prev.hash) {
    const at = { seq: prev.seq + 1, id: "" };
    if (input.head.seq > prev.seq) return broken(at, `the chain head is at event ${input.head.seq} but the newest event is ${prev.seq}: newer events were removed`);
    return broken({ seq: prev.seq, id: events.at(-1)?.id ?? "" }, `the newest event ${prev.seq} does not match the chain head (seq ${input.head.seq})`);
  }
  return { ok: true, checked, ...base };
}
