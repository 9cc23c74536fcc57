// Leader election among coordinator replicas, on the Store port (etcd in the
// product). Every replica serves the API; the one that holds the leader key
// runs the controllers (placement, maintenance). The key is bound to a short
// lease; its create revision is the leader's fencing token: every write the
// leader's controllers make goes through a FencedStore whose transactions
// also compare that create revision, so a deposed leader (paused past its
// lease, cut off from etcd) cannot write even if it has not noticed yet.
//
// The leader steps down (stops its controllers) as soon as it cannot prove
// its lease is still valid: a keep-alive that fails, the key gone or
// recreated, or no successful renewal within the lease's TTL.
import type { Logger } from "pino";
import { NoidError } from "../../common/errors.js";
import type { Compare, KeyValue, Lease, ListOptions, ListResult, Op, Store, TxnResult, Watcher, WatchOptions } from "../store/store.js";

/** Relative to the store prefix, like every key in state/keys.ts. */
export const LEADER_KEY = "leader/coordinator";

export interface LeaderStatus {
  /** This replica holds the leader key (and its lease was valid at the last check). */
  isLeader: boolean;
  /** This replica's id. */
  nodeId: string;
  /** Id of the current leader as last seen in etcd ("" when unknown or none). */
  leaderId: string;
  /** Create revision of the leader key while this replica leads (the fencing token); 0 otherwise. */
  fence: number;
  /** How many times this replica became leader since start. */
  terms: number;
  /** Writes of this replica's controllers that the fence refused (it had been deposed without noticing). */
  refusedWrites: number;
}

export interface LeaderElectorOptions {
  store: Store;
  nodeId: string;
  /** Lease TTL; the leader steps down if it cannot renew within it. */
  leaseSeconds: number;
  logger: Logger;
  /** Called when this replica becomes leader; `fenced` writes fail once the term ends. */
  onElected: (term: { fence: number; fenced: Store }) => void | Promise<void>;
  /** Called at once when the term ends (must stop the controllers started by onElected). */
  onDeposed: (reason: string) => void | Promise<void>;
  /** Time source (tests). */
  now?: () => number;
}

/** Pure: the campaign transaction's condition: nobody holds the key. Its create revision is then the put's revision. */
export const CAMPAIGN_COMPARE: Compare = { key: LEADER_KEY, target: "create", op: "==", value: 0 };

/** Pure: the compare every fenced write carries. */
export function fenceCompare(fence: number): Compare {
  return { key: LEADER_KEY, target: "create", op: "==", value: fence };
}

export class LeaderElector {
  private stopped = false;
  private leading = false;
  private fence = 0;
  private lease?: Lease;
  private leaderId = "";
  private terms = 0;
  private refusedWrites = 0;
  /** Fault injection: renewals and campaigns stop, as if the process were paused. */
  private suspended = false;
  private unaware = false;
  /** The lease is known valid until this time (ms); set from the start of the last successful renewal. */
  private validUntil = 0;
  private timer?: NodeJS.Timeout;
  private watchdog?: NodeJS.Timeout;
  private watcher?: Watcher;
  private busy: Promise<void> = Promise.resolve();
  private readonly now: () => number;

  constructor(private readonly o: LeaderElectorOptions) {
    this.now = o.now ?? Date.now;
  }

  status(): LeaderStatus {
    return {
      isLeader: this.leading,
      nodeId: this.o.nodeId,
      leaderId: this.leaderId,
      fence: this.leading ? this.fence : 0,
      terms: this.terms,
      refusedWrites: this.refusedWrites,
    };
  }

  isLeader(): boolean {
    return this.leading;
  }

  /** Starts campaigning in the background; never throws (etcd may be down at start). */
  async start(): Promise<void> {
    // A watch on the key makes a follower campaign as soon as the leader's key goes away.
    try {
      this.watcher = await this.o.store.watch(LEADER_KEY, {
        onEvents: (evs) => {
          for (const e of evs) {
            if (this.unaware) continue; // a paused process sees nothing
            if (e.type === "delete") {
              this.leaderId = "";
              if (this.leading) this.stepDown("leader key deleted");
              this.schedule(0);
            } else if (e.kv.key === LEADER_KEY) {
              this.leaderId = Buffer.from(e.kv.value).toString();
              if (this.leading && e.kv.createRevision !== this.fence) this.stepDown("leader key recreated by another replica");
            }
          }
        },
      });
    } catch (err) {
      this.o.logger.warn({ err }, "cannot watch the leader key; polling only");
    }
    this.schedule(0);
  }

  /**
   * Fault injection (tests, chaos): stop renewing the lease and campaigning, as
   * if this process were paused or cut off from etcd. With `watchdog: false`
   * the replica also does not notice the lease running out nor the key
   * changing (no watchdog, watch events ignored), like a paused
   * process that resumes late: only the fence keeps its writes out. stop()
   * afterwards does not revoke the lease, like a process that was killed.
   */
  suspendRenewal(opts: { watchdog?: boolean } = {}): void {
    this.suspended = true;
    if (opts.watchdog === false) {
      this.unaware = true;
      if (this.watchdog) clearTimeout(this.watchdog);
    }
  }

  /** Ends the term (revoking the lease so another replica takes over at once) and stops campaigning. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.busy.catch(() => undefined);
    const lease = this.lease;
    if (this.leading) this.stepDown("coordinator stopping");
    if (this.watchdog) clearTimeout(this.watchdog);
    await this.watcher?.cancel().catch(() => undefined);
    if (lease && !this.suspended) await lease.revoke().catch(() => undefined);
  }

  private get tickMs(): number {
    return Math.max(200, Math.floor((this.o.leaseSeconds * 1000) / 3));
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.busy = this.busy.then(() => this.tick()).catch((err) => this.o.logger.warn({ err }, "leader election step failed"));
    }, delayMs);
  }

  private async tick(): Promise<void> {
    if (this.stopped) return;
    if (this.suspended) return this.schedule(this.tickMs);
    try {
      if (this.leading) await this.renew();
      else await this.campaign();
    } finally {
      this.schedule(this.tickMs);
    }
  }

  private async campaign(): Promise<void> {
    const { store, nodeId, leaseSeconds } = this.o;
    const current = await store.get(LEADER_KEY);
    this.leaderId = current ? Buffer.from(current.value).toString() : "";
    if (current && this.leaderId !== nodeId) return; // someone else leads
    if (current) {
      // Our own key from a previous process or an earlier term (same node id): clear it, unless it changed since read,
      // so the new term gets a new create revision (a put on an existing key keeps the old one).
      await store.txn([{ key: LEADER_KEY, target: "mod", op: "==", value: current.modRevision }], [{ type: "delete", key: LEADER_KEY }]);
    }
    if (!this.lease) {
      const startedAt = this.now();
      this.lease = await store.grantLease(leaseSeconds, { dedicated: true });
      this.validUntil = startedAt + leaseSeconds * 1000;
    } else {
      // The lease we kept from a failed attempt may have expired meanwhile.
      const startedAt = this.now();
      try {
        await this.lease.keepAliveOnce();
        this.validUntil = startedAt + leaseSeconds * 1000;
      } catch {
        this.lease = undefined;
        return this.campaign();
      }
    }
    const r = await store.txn([CAMPAIGN_COMPARE], [{ type: "put", key: LEADER_KEY, value: Buffer.from(nodeId), lease: this.lease.id }]);
    if (!r.succeeded) return;
    if (this.stopped) return;
    // The put ran at r.revision, so the key was (re)created there.
    this.fence = r.revision;
    this.leaderId = nodeId;
    this.leading = true;
    this.terms++;
    this.armWatchdog();
    this.o.logger.info({ nodeId, fence: this.fence, leaseSeconds }, "became leader");
    const fenced = new FencedStore(
      store,
      this.fence,
      () => this.leading,
      (why) => {
        this.refusedWrites++;
        this.stepDown(why);
      },
    );
    try {
      await this.o.onElected({ fence: this.fence, fenced });
    } catch (err) {
      this.o.logger.error({ err }, "starting the leader's controllers failed");
      this.stepDown("controllers failed to start");
      await this.lease?.revoke().catch(() => undefined);
      this.lease = undefined;
    }
  }

  private async renew(): Promise<void> {
    const lease = this.lease!;
    const startedAt = this.now();
    try {
      await lease.keepAliveOnce();
      const kv = await this.o.store.get(LEADER_KEY);
      if (!kv || kv.createRevision !== this.fence) {
        this.stepDown("leader key lost");
        return;
      }
      if (this.leading) {
        this.validUntil = startedAt + this.o.leaseSeconds * 1000;
        this.armWatchdog();
      }
    } catch (err) {
      if (err instanceof NoidError && err.code === "NOT_FOUND") {
        this.lease = undefined;
        this.stepDown("leader lease expired");
      } else {
        // etcd unreachable: keep trying until the watchdog says the lease may have run out.
        this.o.logger.warn({ err }, "cannot renew the leader lease");
      }
    }
  }

  /** Steps down when the lease may have expired; a margin covers clock rate and etcd's own timing. */
  private armWatchdog(): void {
    if (this.watchdog) clearTimeout(this.watchdog);
    if (this.unaware) return;
    const margin = Math.min(500, (this.o.leaseSeconds * 1000) / 4);
    const ms = Math.max(0, this.validUntil - margin - this.now());
    this.watchdog = setTimeout(() => {
      if (this.leading) this.stepDown("leader lease not renewed in time");
    }, ms);
  }

  private stepDown(reason: string): void {
    if (!this.leading) return;
    this.leading = false;
    if (this.watchdog) clearTimeout(this.watchdog);
    this.o.logger.warn({ nodeId: this.o.nodeId, fence: this.fence, reason }, "no longer leader; controllers stopped");
    void Promise.resolve()
      .then(() => this.o.onDeposed(reason))
      .catch((err) => this.o.logger.error({ err }, "stopping the leader's controllers failed"));
    this.schedule(this.tickMs);
  }
}

/**
 * A Store whose writes only succeed while the given leader term lasts: each
 * transaction also compares the leader key's create revision. Reads and
 * watches pass through. A write refused by the fence throws UNAVAILABLE
 * ("not the leader") and ends the term locally.
 */
export class FencedStore implements Store {
  constructor(
    private readonly inner: Store,
    readonly fence: number,
    private readonly stillLeading: () => boolean,
    private readonly deposed: (why: string) => void,
  ) {}

  private refuse(): never {
    throw new NoidError("UNAVAILABLE", "not the leader: this coordinator's leader term has ended");
  }

  async txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    // Failure ops would run when the fence fails too: a deposed leader would write. Controllers do not need them.
    if (failure.length > 0) throw new NoidError("INTERNAL", "fenced transactions take no failure operations");
    if (!this.stillLeading()) this.refuse();
    const r = await this.inner.txn([fenceCompare(this.fence), ...compares], success);
    if (r.succeeded) return r;
    const kv = await this.inner.get(LEADER_KEY);
    if (!kv || kv.createRevision !== this.fence) {
      this.deposed("a fenced write was refused");
      this.refuse();
    }
    return r;
  }

  async put(key: string, value: Uint8Array, opts: { lease?: number } = {}): Promise<number> {
    const r = await this.txn([], [{ type: "put", key, value, ...(opts.lease ? { lease: opts.lease } : {}) }]);
    return r.revision;
  }

  async delete(key: string): Promise<number> {
    return (await this.txn([], [{ type: "delete", key }])).revision;
  }

  get(key: string): Promise<KeyValue | undefined> {
    return this.inner.get(key);
  }
  list(prefix: string, opts?: ListOptions): Promise<ListResult> {
    return this.inner.list(prefix, opts);
  }
  watch(prefix: string, opts: WatchOptions): Promise<Watcher> {
    return this.inner.watch(prefix, opts);
  }
  grantLease(ttlSeconds: number, opts?: { dedicated?: boolean }): Promise<Lease> {
    return this.inner.grantLease(ttlSeconds, opts);
  }
  leaseTimeToLive(id: number): Promise<number | undefined> {
    return this.inner.leaseTimeToLive(id);
  }
  compact(revision: number): Promise<void> {
    if (!this.stillLeading()) this.refuse();
    return this.inner.compact(revision);
  }
  revision(): Promise<number> {
    return this.inner.revision();
  }
  answeredWithin(ms: number): boolean {
    return this.inner.answeredWithin?.(ms) ?? false;
  }
  async close(): Promise<void> {
    // The inner store belongs to the coordinator.
  }
}
