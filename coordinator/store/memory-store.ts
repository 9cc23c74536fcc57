// The in-memory twin of the etcd store, for fast unit tests. It mirrors etcd's
// semantics where callers can observe them: one global revision that moves
// only when something changed, create/mod revision and version per key, a
// value compare on a missing key is false, leases delete their keys (as watch
// delete events) when they expire, watches replay history from a revision, and
// compaction makes older start revisions fail through onError (the store.ts
// comment says compaction is a no-op in memory; honouring it instead lets unit
// tests exercise the informer's re-list path).
import { NoidError } from "../../common/errors.js";
import type {
  Compare,
  KeyValue,
  Lease,
  ListOptions,
  ListResult,
  Op,
  Store,
  TxnResult,
  WatchEvent,
  Watcher,
  WatchOptions,
} from "./store.js";

export interface Clock {
  now(): number;
}

export interface MemoryStoreOptions {
  /** Milliseconds clock for lease expiry; defaults to Date.now. */
  clock?: Clock;
  /** How often expired leases are swept in the background; 0 disables the timer. */
  sweepIntervalMs?: number;
}

interface MemLease {
  ttlSeconds: number;
  expiresAt: number;
  keys: Set<string>;
}

interface HistoryEntry {
  revision: number;
  /** Every event at this revision, with prev always filled in (stripped per watcher). */
  events: WatchEvent[];
}

/** Byte order, like etcd (UTF-16 order differs for non-BMP characters). */
export function compareKeys(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function compareBytes(a: Uint8Array, b: Uint8Array): number {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

/** Pure: does `cmp` hold for the key's current state (undefined = absent)? Mirrors etcd's applyCompare. */
export function evaluateCompare(kv: KeyValue | undefined, cmp: Compare): boolean {
  let order: number;
  if (cmp.target === "value") {
    if (kv === undefined) return false; // etcd: a value compare on a missing key never holds
    order = compareBytes(kv.value, cmp.value);
  } else {
    const actual = kv === undefined ? 0 : cmp.target === "mod" ? kv.modRevision : cmp.target === "create" ? kv.createRevision : kv.version;
    order = Math.sign(actual - cmp.value);
  }
  switch (cmp.op) {
    case "==":
      return order === 0;
    case "!=":
      return order !== 0;
    case "<":
      return order < 0;
    case ">":
      return order > 0;
  }
}

function copyKv(kv: KeyValue): KeyValue {
  return { ...kv, value: new Uint8Array(kv.value) };
}

function stripPrev(ev: WatchEvent): WatchEvent {
  if (ev.type === "put") return { type: "put", kv: ev.kv };
  return { type: "delete", key: ev.key, modRevision: ev.modRevision };
}

function eventKey(ev: WatchEvent): string {
  return ev.type === "put" ? ev.kv.key : ev.key;
}

/** Serial delivery to one watcher: batches are awaited one by one, nothing after cancel. */
class MemWatcher implements Watcher {
  cancelled = false;
  private readonly queue: WatchEvent[][] = [];
  private pumping = false;

  constructor(
    readonly prefix: string,
    /** Events below this revision are never delivered (etcd's start_revision). */
    private readonly minRevision: number,
    private readonly opts: WatchOptions,
    private readonly onCancel: (w: MemWatcher) => void,
  ) {}

  offer(entries: HistoryEntry[]): void {
    const batch: WatchEvent[] = [];
    for (const entry of entries) {
      if (entry.revision < this.minRevision) continue;
      for (const ev of entry.events) {
        if (!eventKey(ev).startsWith(this.prefix)) continue;
        batch.push(this.opts.prevKv ? ev : stripPrev(ev));
      }
    }
    if (batch.length === 0 || this.cancelled) return;
    this.queue.push(batch);
    if (!this.pumping) void this.pump();
  }

  fail(err: Error): void {
    if (this.cancelled) return;
    this.cancelled = true;
    this.onCancel(this);
    queueMicrotask(() => this.opts.onError?.(err));
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    // Deliver asynchronously so a handler never runs inside the caller's put/txn.
    await Promise.resolve();
    try {
      for (let batch = this.queue.shift(); batch && !this.cancelled; batch = this.queue.shift()) {
        try {
          await this.opts.onEvents(batch);
        } catch (err) {
          // The consumer's copy is now in an unknown state: break the watch so it re-lists.
          this.fail(new NoidError("INTERNAL", `watch handler failed: ${(err as Error).message}`, { cause: err }));
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  async cancel(): Promise<void> {
    this.cancelled = true;
    this.queue.length = 0;
    this.onCancel(this);
  }
}

export class MemoryStore implements Store {
  private readonly data = new Map<string, KeyValue>();
  private readonly leases = new Map<number, MemLease>();
  private readonly history: HistoryEntry[] = [];
  private readonly watchers = new Set<MemWatcher>();
  private readonly clock: Clock;
  private readonly timer?: NodeJS.Timeout;
  // etcd starts at revision 1 with an empty keyspace; the first write is revision 2.
  private rev = 1;
  private compacted = 0;
  private nextLeaseId = 1;
  private closed = false;

  constructor(opts: MemoryStoreOptions = {}) {
    this.clock = opts.clock ?? { now: () => Date.now() };
    const every = opts.sweepIntervalMs ?? 100;
    if (every > 0) {
      this.timer = setInterval(() => this.expireLeases(), every);
      this.timer.unref();
    }
  }

  /** Deletes the keys of every lease whose deadline has passed; runs before each operation and on a timer. */
  expireLeases(): void {
    const now = this.clock.now();
    for (const [id, lease] of this.leases) {
      if (lease.expiresAt <= now) this.dropLease(id);
    }
  }

  async get(key: string): Promise<KeyValue | undefined> {
    this.enter();
    const kv = this.data.get(key);
    return kv && copyKv(kv);
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<ListResult> {
    this.enter();
    const keys = [...this.data.keys()].filter((k) => k.startsWith(prefix) && (opts.before === undefined || compareKeys(k, opts.before) < 0)).sort(compareKeys);
    if (opts.newestFirst) keys.reverse();
    const limited = opts.limit !== undefined && opts.limit > 0 ? keys.slice(0, opts.limit) : keys;
    const kvs = limited.map((k) => copyKv(this.data.get(k)!));
    if (opts.keysOnly) for (const kv of kvs) kv.value = new Uint8Array(0);
    return { kvs, count: keys.length, revision: this.rev };
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    this.enter();
    const succeeded = compares.every((c) => evaluateCompare(this.data.get(c.key), c));
    const ops = succeeded ? success : failure;
    this.checkOps(ops);
    this.commit((revision) => ops.flatMap((op) => this.applyOp(op, revision)));
    return { succeeded, revision: this.rev };
  }

  async put(key: string, value: Uint8Array, opts: { lease?: number } = {}): Promise<number> {
    await this.txn([], [{ type: "put", key, value, ...(opts.lease ? { lease: opts.lease } : {}) }]);
    return this.rev;
  }

  async delete(key: string): Promise<number> {
    await this.txn([], [{ type: "delete", key }]);
    return this.rev;
  }

  async watch(prefix: string, opts: WatchOptions): Promise<Watcher> {
    this.enter();
    // Like etcd, a start revision of 0 (or none) means "from now on".
    const from = opts.fromRevision || this.rev + 1;
    const w = new MemWatcher(prefix, from, opts, (x) => this.watchers.delete(x));
    this.watchers.add(w);
    if (from < this.compacted) {
      w.fail(new NoidError("FAILED_PRECONDITION", `watch ${prefix}: revision ${from} has been compacted (compacted at ${this.compacted})`));
    } else {
      w.offer(this.history);
    }
    return w;
  }

  async grantLease(ttlSeconds: number): Promise<Lease> {
    this.enter();
    if (!(ttlSeconds >= 1)) throw new NoidError("INVALID_ARGUMENT", `lease ttl must be at least 1 s, got ${ttlSeconds}`);
    const id = this.nextLeaseId++;
    this.leases.set(id, { ttlSeconds, expiresAt: this.clock.now() + ttlSeconds * 1000, keys: new Set() });
    return {
      id,
      keepAliveOnce: async () => {
        this.enter();
        const lease = this.leases.get(id);
        if (!lease) throw new NoidError("NOT_FOUND", `lease ${id} not found (expired or revoked)`);
        lease.expiresAt = this.clock.now() + lease.ttlSeconds * 1000;
      },
      revoke: async () => {
        this.enter();
        this.dropLease(id);
      },
    };
  }

  async leaseTimeToLive(id: number): Promise<number | undefined> {
    this.enter();
    const lease = this.leases.get(id);
    return lease && Math.ceil((lease.expiresAt - this.clock.now()) / 1000);
  }

  async compact(revision: number): Promise<void> {
    this.enter();
    if (revision > this.rev) throw new NoidError("INVALID_ARGUMENT", `compact: revision ${revision} is in the future (current ${this.rev})`);
    if (revision <= this.compacted) return;
    this.compacted = revision;
    while (this.history.length > 0 && this.history[0]!.revision < revision) this.history.shift();
  }

  async revision(): Promise<number> {
    this.enter();
    return this.rev;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    for (const w of [...this.watchers]) await w.cancel();
  }

  private enter(): void {
    if (this.closed) throw new NoidError("UNAVAILABLE", "memory store is closed");
    this.expireLeases();
  }

  /** etcd rejects a txn that writes one key twice; so do we, so tests catch it early. */
  private checkOps(ops: Op[]): void {
    const seen = new Set<string>();
    for (const op of ops) {
      if (op.type === "deletePrefix") continue;
      if (seen.has(op.key)) throw new NoidError("INVALID_ARGUMENT", `txn: duplicate key ${op.key} in one transaction`);
      seen.add(op.key);
      if (op.type === "put" && op.lease && !this.leases.has(op.lease)) {
        throw new NoidError("NOT_FOUND", `lease ${op.lease} not found (expired or revoked)`);
      }
    }
  }

  /** Runs `change` at the next revision; the revision only moves if it produced events. */
  private commit(change: (revision: number) => WatchEvent[]): void {
    const revision = this.rev + 1;
    const events = change(revision);
    if (events.length === 0) return;
    this.rev = revision;
    const entry: HistoryEntry = { revision, events };
    this.history.push(entry);
    for (const w of this.watchers) w.offer([entry]);
  }

  private applyOp(op: Op, revision: number): WatchEvent[] {
    switch (op.type) {
      case "put": {
        const prev = this.data.get(op.key);
        const lease = op.lease ?? 0;
        if (prev?.lease) this.leases.get(prev.lease)?.keys.delete(op.key);
        if (lease) this.leases.get(lease)?.keys.add(op.key);
        const kv: KeyValue = {
          key: op.key,
          value: new Uint8Array(op.value),
          modRevision: revision,
          createRevision: prev ? prev.createRevision : revision,
          version: prev ? prev.version + 1 : 1,
          lease,
        };
        this.data.set(op.key, kv);
        return [prev ? { type: "put", kv: copyKv(kv), prev: copyKv(prev) } : { type: "put", kv: copyKv(kv) }];
      }
      case "delete":
        return this.deleteKey(op.key, revision);
      case "deletePrefix":
        return [...this.data.keys()]
          .filter((k) => k.startsWith(op.prefix))
          .sort(compareKeys)
          .flatMap((k) => this.deleteKey(k, revision));
    }
  }

  private deleteKey(key: string, revision: number): WatchEvent[] {
    const prev = this.data.get(key);
    if (!prev) return [];
    this.data.delete(key);
    if (prev.lease) this.leases.get(prev.lease)?.keys.delete(key);
    return [{ type: "delete", key, modRevision: revision, prev: copyKv(prev) }];
  }

  private dropLease(id: number): void {
    const lease = this.leases.get(id);
    if (!lease) return;
    this.leases.delete(id);
    const keys = [...lease.keys].sort(compareKeys);
    this.commit((revision) => keys.flatMap((k) => this.deleteKey(k, revision)));
  }
}
