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

/** Pure: which ids (sorted oldest first) the retention policy drops at `now`. */
export function planTrim(ids: readonly string[], now: number, p: RetentionPolicy): string[] {
  const sorted = [...ids].sort();
  const excess = Math.max(0, sorted.length - p.maxCount);
  let cut = excess;
  if (p.maxAgeMs > 0) {
    const oldest = now - p.maxAgeMs;
    while (cut < sorted.length && idTime(sorted[cut]!) < oldest) cut++;
  }
  return sorted.slice(0, cut);
}

/** etcd's default limit is 128 operations per transaction. */
const TRIM_BATCH = 100;

export class EventLog {
  private writesSinceTrim = 0;
  private trimming: Promise<number> | undefined;

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

  /** Writes one event. A burst past a tenth of the count bound trims at once, not at the next maintenance tick. */
  async record(input: EventInput): Promise<Event> {
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
      id: eventId(time),
      time,
    };
    await this.d.store.put(eventKey(ev.id), enc(Event, ev));
    this.d.onRecord?.(ev);
    if (++this.writesSinceTrim >= Math.max(10, Math.floor(this.d.retention.maxCount / 10)) && !this.trimming) {
      this.trimming = this.trim().finally(() => (this.trimming = undefined));
      this.trimming.catch((err: unknown) => this.d.onTrimError?.(err));
    }
    return ev;
  }

  private async all(): Promise<{ events: Event[]; revision: number }> {
    const r = await this.d.store.list(EVENTS_PREFIX);
    return { events: r.kvs.map((kv) => dec(Event, kv.value)).sort((a, b) => a.id.localeCompare(b.id)), revision: r.revision };
  }

  /** Newest first, at most `limit`, only what `who` may see. */
  async list(f: EventFilter & { limit: number }, who?: Principal): Promise<Event[]> {
    const { events } = await this.all();
    const out: Event[] = [];
    for (let i = events.length - 1; i >= 0 && out.length < f.limit; i--) {
      const ev = events[i]!;
      if (matches(ev, f) && (!who || visibleTo(ev, who))) out.push(ev);
    }
    return out;
  }

  /**
   * Calls `send` for every matching event: first the retained ones at or
   * after `since` (oldest first, only when `since` is given), then each new
   * one as it is written. Resolves when `signal` aborts; rejects if the
   * watch breaks.
   */
  async follow(f: EventFilter, who: Principal | undefined, send: (ev: Event) => void, signal: AbortSignal): Promise<void> {
    const ok = (ev: Event) => matches(ev, f) && (!who || visibleTo(ev, who));
    const { events, revision } = await this.all();
    if (f.since) for (const ev of events) if (ok(ev)) send(ev);
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
    const r = await this.d.store.list(EVENTS_PREFIX);
    const ids = r.kvs.map((kv) => kv.key.slice(kv.key.lastIndexOf("/") + 1));
    const drop = planTrim(ids, this.d.clock.now().getTime(), this.d.retention);
    for (let i = 0; i < drop.length; i += TRIM_BATCH) {
      const ops: Op[] = drop.slice(i, i + TRIM_BATCH).map((id) => ({ type: "delete", key: eventKey(id) }));
      await this.d.store.txn([], ops);
    }
    return drop.length;
  }
}
