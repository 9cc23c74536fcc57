// The event log in etcd: events/<sortable time>-<random> -> Event (under the
// store prefix, so /noid/v1/events/...). Bounded by count and age; trimming
// is planned purely (planTrim) and applied in batches. Unlike the audit log,
// events are not hash-chained: they tell operators what happened, the audit
// log proves who did it.
import { randomBytes } from "node:crypto";
import { Event } from "../../gen/noid/v1/event.js";
import { Role } from "../../gen/noid/v1/auth.js";
import type { Principal } from "../auth/authorize.js";
import type { Op, Store, Watcher } from "../store/store.js";
import { dec, enc } from "../state/codec.js";

export const EVENTS_PREFIX = "events/";
export const eventKey = (id: string): string => `${EVENTS_PREFIX}${id}`;

export interface Clock {
  now(): Date;
}

export type EventInput = Omit<Event, "id" | "time" | "severity" | "attributes" | "vmId" | "vmName" | "owner" | "hostId" | "hostName" | "message"> &
  Partial<Pick<Event, "severity" | "attributes" | "vmId" | "vmName" | "owner" | "hostId" | "hostName" | "message">>;

export interface RetentionPolicy {
  /** Keep at most this many events (the newest). */
  maxCount: number;
  /** Drop events older than this (ms); 0 keeps them regardless of age. */
  maxAgeMs: number;
}

export interface EventFilter {
  /** VM id or name. */
  vm?: string;
  /** Host id or name. */
  host?: string;
  /** Exact kind or a dotted prefix ("security" matches "security.arp_spoof"). */
  kind?: string;
  since?: Date;
}

/** Ids sort by time: 13-digit ms timestamp, then randomness for uniqueness. */
export function eventId(at: Date): string {
  return `${String(at.getTime()).padStart(13, "0")}-${randomBytes(4).toString("hex")}`;
}

/**
 * Ids of one writer in the order it records: within one millisecond the
 * suffix counts up from a random start (below 2^31, so it cannot wrap), so
 * events recorded together keep their order when listed.
 */
export class EventIds {
  private ms = -1;
  private seq = 0;

  next(at: Date): string {
    const ms = at.getTime();
    if (ms !== this.ms) {
      this.ms = ms;
      this.seq = randomBytes(4).readUInt32BE(0) >>> 1;
    } else this.seq++;
    return `${String(ms).padStart(13, "0")}-${this.seq.toString(16).padStart(8, "0")}`;
  }
}

/** The time encoded in an id (NaN if it is not one of ours). */
export function idTime(id: string): number {
  return Number(id.slice(0, 13));
}

/** Pure: does `ev` pass `f`? */
export function matches(ev: Event, f: EventFilter): boolean {
  if (f.vm && ev.vmId !== f.vm && ev.vmName !== f.vm) return false;
  if (f.host && ev.hostId !== f.host && ev.hostName !== f.host) return false;
  if (f.kind && ev.kind !== f.kind && !ev.kind.startsWith(f.kind + ".")) return false;
  if (f.since && (ev.time?.getTime() ?? 0) < f.since.getTime()) return false;
  return true;
}

/**
 * Pure: may `p` see `ev`? Admins see everything; every other role sees the
 * events of its own VMs only (host, login and unattributed security events
 * have no owner and stay with admins).
 */
export function visibleTo(ev: Event, p: Principal): boolean {
  if (p.role === Role.ROLE_ADMIN) return true;
  return ev.owner !== "" && ev.owner === p.user;
}

/**
 * Pure: which ids the retention policy drops at `now`, given the oldest ids
 * (any order; all of them, or the oldest few) of `total` events. What is
 * dropped is always the oldest; beyond the ids given, nothing (the next trim
 * goes on).
 */
export function planTrim(oldest: readonly string[], total: number, now: number, p: RetentionPolicy): string[] {
  const sorted = [...oldest].sort();
  const excess = Math.min(sorted.length, Math.max(0, total - p.maxCount));
  let cut = excess;
  if (p.maxAgeMs > 0) {
    const oldest = now - p.maxAgeMs;
    while (cut < sorted.length && idTime(sorted[cut]!) < oldest) cut++;
  }
  return sorted.slice(0, cut);
}

/** etcd's default limit is 128 operations per transaction. */
const TRIM_BATCH = 100;
/** Events read per page when listing, newest first (twice the limit asked, within these). */
const LIST_PAGE_MIN = 100;
const LIST_PAGE_MAX = 1000;
/** Oldest keys a trim reads beyond those over the count (for the age limit; older ones wait for the next trim). */
const TRIM_SCAN = 1000;
/** Events written in one transaction at most. */
export const WRITE_BATCH = 100;
/** A write starts at most this often (ms), so a burst of events shares transactions. */
export const WRITE_LINGER_MS = 100;

interface Pending {
  ev: Event;
  resolve: (ev: Event) => void;
  reject: (err: unknown) => void;
}

export class EventLog {
  private writesSinceTrim = 0;
  private trimming: Promise<number> | undefined;
  private readonly ids = new EventIds();
  private pending: Pending[] = [];
  private flushing = false;
  private timer: NodeJS.Timeout | undefined;
  private lastFlushAt = 0;
  /** Transactions written and events in them (for tests and the bench's notes). */
  readonly writes = { txns: 0, events: 0 };

  constructor(
    private readonly d: {
      store: Store;
      clock: Clock;
      retention: RetentionPolicy;
      /** Called for every event written (metrics). */
      onRecord?: (ev: Event) => void;
      onTrimError?: (err: unknown) => void;
    },
  ) {}

  /**
   * Writes one event; resolves when it is in etcd. Events group-commit: one
   * transaction per WRITE_LINGER_MS at most (up to WRITE_BATCH events each;
   * a full batch is written at once), so a VM's created/placed/RUNNING events
   * and everyone else's share writes instead of costing one etcd write each.
   * A lone event waits at most the linger. A burst past a tenth of the count bound trims at once, not at the
   * next maintenance tick.
   */
  record(input: EventInput): Promise<Event> {
    const time = this.d.clock.now();
    const ev: Event = {
      severity: "info",
      attributes: {},
      vmId: "",
      vmName: "",
      owner: "",
      hostId: "",
      hostName: "",
      message: "",
      ...input,
      id: this.ids.next(time),
      time,
    };
    return new Promise<Event>((resolve, reject) => {
      this.pending.push({ ev, resolve, reject });
      this.schedule();
    });
  }

  /** Resolves when every event recorded so far is written (or failed). */
  async flush(): Promise<void> {
    while (this.pending.length > 0 || this.flushing) {
      if (!this.flushing) {
        if (this.timer) clearTimeout(this.timer);
        this.timer = undefined;
        await this.writeBatch();
      } else await new Promise((r) => setTimeout(r, 5));
    }
  }

  private schedule(): void {
    if (this.flushing || this.pending.length === 0) return;
    if (this.timer) {
      if (this.pending.length < WRITE_BATCH) return;
      clearTimeout(this.timer);
    }
    // A full batch goes at once: the linger caps transactions for a trickle, not events for a burst
    // (at one batch per linger a placement burst's events took seconds to drain).
    const wait = this.pending.length >= WRITE_BATCH ? 0 : Math.max(0, this.lastFlushAt + WRITE_LINGER_MS - Date.now());
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.writeBatch();
    }, wait);
  }

  private async writeBatch(): Promise<void> {
    if (this.flushing) return;
    const batch = this.pending.splice(0, WRITE_BATCH);
    if (batch.length === 0) return;
    this.flushing = true;
    this.lastFlushAt = Date.now();
    try {
      await this.d.store.txn(
        [],
        batch.map((p): Op => ({ type: "put", key: eventKey(p.ev.id), value: enc(Event, p.ev) })),
      );
      this.writes.txns++;
      this.writes.events += batch.length;
      for (const p of batch) {
        this.d.onRecord?.(p.ev);
        p.resolve(p.ev);
      }
      this.writesSinceTrim += batch.length;
      if (this.writesSinceTrim >= Math.max(10, Math.floor(this.d.retention.maxCount / 10)) && !this.trimming) {
        this.trimming = this.trim().finally(() => (this.trimming = undefined));
        this.trimming.catch((err: unknown) => this.d.onTrimError?.(err));
      }
    } catch (err) {
      for (const p of batch) p.reject(err);
    } finally {
      this.flushing = false;
      this.schedule();
    }
  }

  private async all(): Promise<{ events: Event[]; revision: number }> {
    const r = await this.d.store.list(EVENTS_PREFIX);
    return { events: r.kvs.map((kv) => dec(Event, kv.value)).sort((a, b) => a.id.localeCompare(b.id)), revision: r.revision };
  }

  /**
   * Newest first, at most `limit`, only what `who` may see. Read newest first
   * a page at a time, until enough match or the events are older than `since`
   * (reading all 10,000 retained events per call was ~100 ms of blocked
   * coordinator, BENCHMARKS finding 13).
   */
  async list(f: EventFilter & { limit: number }, who?: Principal): Promise<Event[]> {
    const out: Event[] = [];
    const size = Math.min(LIST_PAGE_MAX, Math.max(LIST_PAGE_MIN, 2 * f.limit));
    const since = f.since?.getTime();
    let before: string | undefined;
    for (;;) {
      const page = await this.d.store.list(EVENTS_PREFIX, { newestFirst: true, limit: size, ...(before !== undefined ? { before } : {}) });
      for (const kv of page.kvs) {
        // Ids carry their event's time: everything from here on is older than `since`.
        if (since !== undefined && idTime(kv.key.slice(EVENTS_PREFIX.length)) < since) return out;
        const ev = dec(Event, kv.value);
        if (matches(ev, f) && (!who || visibleTo(ev, who))) out.push(ev);
        if (out.length >= f.limit) return out;
      }
      if (page.kvs.length < size) return out;
      before = page.kvs.at(-1)!.key;
    }
  }

  /**
   * Calls `send` for every matching event: first the retained ones at or
   * after `since` (oldest first, only when `since` is given), then each new
   * one as it is written. Resolves when `signal` aborts; rejects if the
   * watch breaks.
   */
  async follow(f: EventFilter, who: Principal | undefined, send: (ev: Event) => void, signal: AbortSignal): Promise<void> {
    const ok = (ev: Event) => matches(ev, f) && (!who || visibleTo(ev, who));
    // Without `since` only the revision to follow from is needed, not every retained event.
    const { events, revision } = f.since ? await this.all() : { events: [], revision: (await this.d.store.list(EVENTS_PREFIX, { keysOnly: true, limit: 1 })).revision };
    for (const ev of events) if (ok(ev)) send(ev);
    if (signal.aborted) return;
    let watcher: Watcher | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        signal.addEventListener("abort", () => resolve(), { once: true });
        void this.d.store
          .watch(EVENTS_PREFIX, {
            fromRevision: revision + 1,
            onEvents: (evs) => {
              for (const e of evs) {
                if (e.type !== "put") continue;
                const ev = dec(Event, e.kv.value);
                if (ok(ev)) send(ev);
              }
            },
            onError: reject,
          })
          .then((w) => {
            watcher = w;
            if (signal.aborted) resolve();
          }, reject);
      });
    } finally {
      await watcher?.cancel().catch(() => undefined);
    }
  }

  /** Applies the retention policy; returns how many events were deleted. */
  async trim(): Promise<number> {
    this.writesSinceTrim = 0;
    // The count and the oldest keys only: reading every event (10,000 by default) blocked
    // the coordinator ~100 ms each time, every 1,000 events written (BENCHMARKS finding 13).
    let r = await this.d.store.list(EVENTS_PREFIX, { keysOnly: true, limit: TRIM_SCAN });
    const excess = r.count - this.d.retention.maxCount;
    if (excess > r.kvs.length) r = await this.d.store.list(EVENTS_PREFIX, { keysOnly: true, limit: excess + TRIM_SCAN });
    const ids = r.kvs.map((kv) => kv.key.slice(kv.key.lastIndexOf("/") + 1));
    const drop = planTrim(ids, r.count, this.d.clock.now().getTime(), this.d.retention);
    for (let i = 0; i < drop.length; i += TRIM_BATCH) {
      const ops: Op[] = drop.slice(i, i + TRIM_BATCH).map((id) => ({ type: "delete", key: eventKey(id) }));
      await this.d.store.txn([], ops);
    }
    return drop.length;
  }
}
