// The etcd implementation of the Store port: the product. Every call uses the
// raw KV/Lease RPCs with a deadline, so a dead or frozen etcd surfaces as
// NoidError UNAVAILABLE within the request timeout instead of hanging. The
// etcd3 client's own retry and circuit-breaker policies are switched off:
// retrying is the caller's decision (informers re-list, handlers return
// UNAVAILABLE to clients), and an open breaker would keep failing calls for
// seconds after etcd came back.
import {
  Etcd3,
  EtcdLeaseInvalidError,
  GRPCDeadlineExceededError,
  GRPCUnavailableError,
  GRPCCancelledError,
  GRPCResourceExhastedError,
  ClientClosedError,
  castGrpcError,
  type IKeyValue,
  type IResponseHeader,
  type IOptions,
  type Watcher as EtcdWatcher,
  type IWatchResponse,
} from "etcd3";
import { ExponentialBackoff, isBrokenCircuitError, noop } from "cockatiel";
import * as grpc from "@grpc/grpc-js";
import { randomInt } from "node:crypto";
import { NoidError } from "../../common/errors.js";
import type { Compare, KeyValue, Lease, ListOptions, ListResult, Op, Store, TxnResult, WatchEvent, Watcher, WatchOptions } from "./store.js";
import { installEtcdWatchGuard } from "./etcd3-watch-guard.js";
import { LeaseKeeper, type KeepAliveStream, type LeaseKeeperStats } from "./lease-keeper.js";
import { EtcdKvClient, type KvCompare, type KvOp, type RawKv } from "./etcd-kv-http2.js";

installEtcdWatchGuard();

export interface EtcdStoreOptions {
  endpoints: string[];
  /** Prepended to every key, e.g. "/noid/v1/". */
  prefix: string;
  dialTimeoutMs?: number;
  /** Deadline of each request; default 5 s. */
  requestTimeoutMs?: number;
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
  /** Lease renewals over shared LeaseKeepAlive streams (default); false: a stream per renewal (bench/keepalive.ts compares). */
  sharedKeepAlive?: boolean;
  /** Shared LeaseKeepAlive streams, leases spread over them by id (default KEEPALIVE_STREAMS). */
  keepAliveStreams?: number;
}

/**
 * A gRPC stream writes one message at a time, the next once the last one's
 * write completed: one renewal per event-loop turn on a stream. A busy
 * coordinator fell behind 1,000 hosts' renewals on one stream (turns of 20 ms:
 * 120 renewals/s, leases expired; bench/keepalive.ts --busy-ms); spread over
 * 32 streams they go out up to 32 per turn (turns of 40 ms: 400/s, p99 127 ms).
 */
export const KEEPALIVE_STREAMS = 32;

const DEFAULT_REQUEST_TIMEOUT_MS = 5000;
const DEFAULT_DIAL_TIMEOUT_MS = 3000;

/** Pure: the exclusive end of the key range that starts with `prefix` (etcd's range_end). */
export function prefixRangeEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i] = end[i]! + 1;
      return end.subarray(0, i + 1);
    }
  }
  return Buffer.from([0]); // every key: etcd's "\0" range end means "to the end of the keyspace"
}


/** Pure: etcd's error (already cast by etcd3) to our error, naming what we were doing. */
export function mapEtcdError(what: string, err: unknown): NoidError {
  if (err instanceof NoidError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const unavailable =
    err instanceof GRPCUnavailableError ||
    err instanceof GRPCDeadlineExceededError ||
    err instanceof GRPCCancelledError ||
    err instanceof ClientClosedError ||
    isBrokenCircuitError(err) ||
    /no leader|leader changed|timed out|request timed out|not capable/i.test(msg);
  if (unavailable) return new NoidError("UNAVAILABLE", `etcd unavailable: ${what}: ${msg}`, { cause: err });
  if (err instanceof EtcdLeaseInvalidError || msg.includes("requested lease not found")) {
    return new NoidError("NOT_FOUND", `${what}: lease not found (expired or revoked)`, { cause: err });
  }
  if (err instanceof GRPCResourceExhastedError || msg.includes("database space exceeded")) {
    return new NoidError("RESOURCE_EXHAUSTED", `${what}: ${msg}`, { cause: err });
  }
  if (/duplicate key given in txn|future revision|too many operations/.test(msg)) {
    return new NoidError("INVALID_ARGUMENT", `${what}: ${msg}`, { cause: err });
  }
  return new NoidError("INTERNAL", `etcd ${what}: ${msg}`, { cause: err });
}

export class EtcdStore implements Store {
  private readonly prefix: Buffer;
  private closed = false;
  /** Open watches: close() cancels them, else etcd3 keeps trying to re-establish them forever. */
  private readonly watches = new Set<EtcdWatch>();
  /** Lease renewals of this client go over a few shared LeaseKeepAlive streams, a lease always on the same one. */
  private readonly keepers: LeaseKeeper[];

  constructor(
    private readonly client: Etcd3,
    /** Range and Txn go here (etcd-kv-http2.ts); watches, leases and the rest through etcd3. */
    private readonly kv: EtcdKvClient,
    prefix: string,
    private readonly timeoutMs: number,
    private readonly endpointCount = 1,
    sharedKeepAlive = true,
    keepAliveStreams = KEEPALIVE_STREAMS,
  ) {
    this.prefix = Buffer.from(prefix);
    this.keepers = Array.from(
      { length: Math.max(1, keepAliveStreams) },
      () =>
        new LeaseKeeper({
          open: () => this.client.leaseClient.leaseKeepAlive() as Promise<KeepAliveStream>,
          timeoutMs,
          // As call(): a few tries per member before the caller hears etcd is unavailable.
          maxAttempts: 3 * endpointCount + 1,
          mapError: (what, err) => mapEtcdError(what, err instanceof Error ? castGrpcError(err) : err),
          renewAlone: (id) => this.keepAliveAlone(id),
          shared: sharedKeepAlive,
        }),
    );
  }

  private keeperOf(id: number): LeaseKeeper {
    return this.keepers[id % this.keepers.length]!;
  }

  /** Counters of the shared lease keepalive streams, summed (streams opened, requests, answers...). */
  leaseStats(): LeaseKeeperStats {
    const sum = { ...this.keepers[0]!.stats };
    for (const k of this.keepers.slice(1)) for (const f of Object.keys(sum) as (keyof LeaseKeeperStats)[]) sum[f] += k.stats[f];
    return sum;
  }

  async get(key: string): Promise<KeyValue | undefined> {
    const res = await this.call(`get ${key}`, (o) => this.kv.range({ key: this.full(key) }, o.deadline));
    return res.kvs[0] && this.fromRaw(res.kvs[0]);
  }

  async list(prefix: string, opts: ListOptions = {}): Promise<ListResult> {
    const start = this.full(prefix);
    const res = await this.call(`list ${prefix}`, (o) =>
      this.kv.range(
        {
          key: start,
          rangeEnd: opts.before !== undefined ? this.full(opts.before) : prefixRangeEnd(start),
          ...(opts.limit ? { limit: opts.limit } : {}),
          ...(opts.keysOnly ? { keysOnly: true } : {}),
          ...(opts.newestFirst ? { descending: true } : {}),
        },
        o.deadline,
      ),
    );
    return { kvs: res.kvs.map((x) => this.fromRaw(x)), count: res.count, revision: res.revision };
  }

  txn(compares: Compare[], success: Op[], failure: Op[] = []): Promise<TxnResult> {
    return this.call("txn", (o) =>
      this.kv.txn(
        compares.map((c) => this.toKvCompare(c)),
        success.map((op) => this.toKvOp(op)),
        failure.map((op) => this.toKvOp(op)),
        o.deadline,
      ),
    );
  }

  async put(key: string, value: Uint8Array, opts: { lease?: number } = {}): Promise<number> {
    const res = await this.call(`put ${key}`, (o) =>
      this.client.kv.put({ key: this.full(key), value: Buffer.from(value), ...(opts.lease ? { lease: opts.lease } : {}) }, o),
    );
    return rev(res.header);
  }

  async delete(key: string): Promise<number> {
    const res = await this.call(`delete ${key}`, (o) => this.client.kv.deleteRange({ key: this.full(key) }, o));
    return rev(res.header);
  }

  async watch(prefix: string, opts: WatchOptions): Promise<Watcher> {
    // Pin "from now on" to a revision so a reconnect before the first event loses nothing.
    const from = opts.fromRevision || (await this.revision()) + 1;
    const start = this.full(prefix);
    let builder = this.client.watch().inRange({ start, end: prefixRangeEnd(start) }).startRevision(String(from));
    if (opts.prevKv) builder = builder.withPreviousKV();
    const raw = builder.watcher();
    const w = new EtcdWatch(raw, opts, (kv) => this.toKv(kv), prefix, this.timeoutMs, () => this.watches.delete(w), from);
    this.watches.add(w);
    try {
      await w.connected(this.timeoutMs);
    } catch (err) {
      await w.cancel();
      throw mapEtcdError(`watch ${prefix}`, err);
    }
    return w;
  }

  async grantLease(ttlSeconds: number, opts: { dedicated?: boolean } = {}): Promise<Lease> {
    // We choose the id: etcd's own ids are int64 and often exceed 2^53, which a
    // JS number (the Store's lease type) cannot hold exactly.
    for (let attempt = 0; ; attempt++) {
      const id = randomInt(1, 2 ** 48);
      try {
        const at = Date.now();
        const res = await this.call(`grant lease`, (o) => this.client.leaseClient.leaseGrant({ TTL: ttlSeconds, ID: id }, o));
        this.keeperOf(id).granted(id, Number(res.TTL) || ttlSeconds, at);
        return this.leaseHandle(id, opts.dedicated ?? false);
      } catch (err) {
        const e = err as NoidError;
        if (attempt < 3 && /lease already exists/.test(String((e.cause as Error | undefined)?.message))) continue;
        throw e;
      }
    }
  }

  async leaseTimeToLive(id: number): Promise<number | undefined> {
    try {
      const res = await this.call(`lease ${id} ttl`, (o) => this.client.leaseClient.leaseTimeToLive({ ID: id }, o));
      const ttl = Number(res.TTL);
      return ttl > 0 ? ttl : undefined; // etcd answers -1 for a lease it does not know
    } catch (err) {
      if (err instanceof NoidError && err.code === "NOT_FOUND") return undefined;
      throw err;
    }
  }

  async compact(revision: number): Promise<void> {
    try {
      await this.call(`compact ${revision}`, (o) => this.client.kv.compact({ revision, physical: false }, o));
    } catch (err) {
      // Compacting to a revision already compacted is a success: the history is gone either way.
      if (err instanceof NoidError && /has been compacted/.test(String((err.cause as Error | undefined)?.message))) return;
      throw err;
    }
  }

  async revision(): Promise<number> {
    const res = await this.call("read revision", (o) => this.kv.range({ key: this.prefix, rangeEnd: prefixRangeEnd(this.prefix), countOnly: true }, o.deadline));
    return res.revision;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const k of this.keepers) k.close();
    await Promise.all([...this.watches].map((w) => w.cancel()));
    this.kv.close();
    this.client.close();
  }

  private leaseHandle(id: number, dedicated = false): Lease {
    return {
      id,
      keepAliveOnce: dedicated ? async () => void (await this.keepAliveAlone(String(id))) : () => this.keepAliveOnce(id),
      revoke: async () => {
        this.keeperOf(id).forget(id);
        try {
          await this.call(`revoke lease ${id}`, (o) => this.client.leaseClient.leaseRevoke({ ID: id }, o));
        } catch (err) {
          if (!(err instanceof NoidError && err.code === "NOT_FOUND")) throw err;
        }
      },
    };
  }

  private lastAnswer = 0;
  private lastFailure = 0;

  answeredWithin(ms: number): boolean {
    return this.lastAnswer > Date.now() - ms && this.lastAnswer >= this.lastFailure;
  }

  private async keepAliveOnce(id: number): Promise<void> {
    await this.keeperOf(id).renew(id); // NOT_FOUND once the lease has expired, UNAVAILABLE when etcd does not answer
  }

  /** One renewal on a LeaseKeepAlive stream of its own (a lease that may have expired: see lease-keeper.ts). */
  private async keepAliveAlone(id: string): Promise<number> {
    const res = await this.call(`keep lease ${id} alive`, async (o) => {
      const stream = await this.client.leaseClient.leaseKeepAlive(o);
      try {
        return await new Promise<{ TTL: string }>((resolve, reject) => {
          stream.on("data", resolve);
          stream.on("error", (e: Error) => reject(castGrpcError(e)));
          stream.write({ ID: id });
        });
      } finally {
        stream.end();
      }
    });
    const ttl = Number(res.TTL);
    if (ttl <= 0) throw new NoidError("NOT_FOUND", `keep lease ${id} alive: lease not found (expired or revoked)`);
    return ttl;
  }

  /**
   * Runs one RPC with a deadline. With several endpoints, a call that never
   * reached etcd (its member is down: no connection) is tried on the others
   * within the same deadline; anything that may have reached etcd is not retried.
   */
  private async call<T>(what: string, rpc: (opts: { deadline: Date }) => Promise<T>): Promise<T> {
    const until = Date.now() + this.timeoutMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.callOnce(what, rpc, Math.max(1, until - Date.now()));
      } catch (err) {
        // etcd3 picks a member at random per call: a few tries per member make missing every live one unlikely.
        if (attempt >= 3 * this.endpointCount + 1 || Date.now() >= until || !neverSent(err)) throw err;
      }
    }
  }

  /** One attempt; a belt-and-braces timer covers stream set-up that ignores deadlines. */
  private async callOnce<T>(what: string, rpc: (opts: { deadline: Date }) => Promise<T>, timeoutMs: number): Promise<T> {
    if (this.closed) throw new NoidError("UNAVAILABLE", `etcd unavailable: ${what}: store is closed`);
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new GRPCDeadlineExceededError(`no answer within ${timeoutMs} ms`)), timeoutMs + 250);
    });
    try {
      const r = await Promise.race([rpc({ deadline: new Date(Date.now() + timeoutMs) }), timeout]);
      this.lastAnswer = Date.now();
      return r;
    } catch (err) {
      const e = mapEtcdError(what, err);
      if (e instanceof NoidError && (e.code === "UNAVAILABLE" || e.code === "DEADLINE_EXCEEDED")) this.lastFailure = Date.now();
      else this.lastAnswer = Date.now();
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }

  private full(key: string): Buffer {
    return Buffer.concat([this.prefix, Buffer.from(key)]);
  }

  private toKv(kv: IKeyValue): KeyValue {
    return {
      key: kv.key.subarray(this.prefix.length).toString(),
      value: new Uint8Array(kv.value),
      modRevision: Number(kv.mod_revision),
      createRevision: Number(kv.create_revision),
      version: Number(kv.version),
      lease: Number(kv.lease),
    };
  }

  private fromRaw(kv: RawKv): KeyValue {
    return {
      key: kv.key.subarray(this.prefix.length).toString(),
      value: new Uint8Array(kv.value),
      modRevision: kv.modRevision,
      createRevision: kv.createRevision,
      version: kv.version,
      lease: kv.lease,
    };
  }

  private toKvCompare(c: Compare): KvCompare {
    return { key: this.full(c.key), target: c.target, op: c.op, value: c.value };
  }

  private toKvOp(op: Op): KvOp {
    switch (op.type) {
      case "put":
        return { put: { key: this.full(op.key), value: op.value, ...(op.lease ? { lease: op.lease } : {}) } };
      case "delete":
        return { del: { key: this.full(op.key) } };
      case "deletePrefix": {
        const start = this.full(op.prefix);
        return { del: { key: start, rangeEnd: prefixRangeEnd(start) } };
      }
    }
  }
}

/** Pure: the error says the request was never sent (no connection to that member), so trying another member is safe. */
export function neverSent(err: unknown): boolean {
  return err instanceof NoidError && err.code === "UNAVAILABLE" && /No connection established|ECONNREFUSED|connect ECONN/.test(err.message);
}

/**
 * Asks etcd to refuse requests at once ("etcdserver: no leader") while the
 * member has no leader, i.e. the cluster has lost quorum, instead of letting
 * them wait for the whole deadline. etcd's own clientv3 calls this WithRequireLeader.
 */
const requireLeader: grpc.Interceptor = (options, nextCall) =>
  new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set("hasleader", "true");
      next(metadata, listener);
    },
  });

function rev(header: IResponseHeader): number {
  return Number(header.revision);
}

/**
 * Adapts etcd3's event-emitter watcher to the Store's contract: batches are
 * delivered one at a time and awaited, nothing is delivered after cancel(),
 * and a watch etcd cancels (start revision compacted) reports through onError.
 * etcd3 re-establishes the stream after etcd restarts; it resumes from the
 * revision after the last event this adapter received (see `resumeFrom`).
 */
export class EtcdWatch implements Watcher {
  private cancelled = false;
  private readonly queue: WatchEvent[][] = [];
  private pumping = false;
  private isConnected = false;
  /**
   * The first revision not received yet: the watch resumes from here after a
   * broken stream, and events below it (a replay) are dropped.
   *
   * etcd3 (1.1.2) resumes from its own idea instead: the revision in the
   * header of the last response + 1, set on every response and on the
   * "created" answer of a re-attached watch. That header is etcd's current
   * revision, not the last event sent: a re-attached watch's "created" comes
   * before the events it has to catch up on (etcd sends those up to 100 ms
   * later), and a watch that fell behind (a busy client, etcd's "victim"
   * watchers) gets events up to some revision in a response whose header is
   * already ahead. A stream that broke again in between resumed past events
   * never received: the informers of the chaos suite's coordinators silently
   * lost changes after an etcd member restart under load (one replica showed
   * a host unreachable for minutes, VM counts per host differed by replica, a
   * VM ran on two hosts). And a "created" header from a member still catching
   * up moved the resume point back, so a break then replayed old events.
   */
  private next: number;

  constructor(
    private readonly raw: EtcdWatcher,
    private readonly opts: WatchOptions,
    private readonly toKv: (kv: IKeyValue) => KeyValue,
    private readonly prefix: string,
    private readonly timeoutMs: number,
    private readonly onDone: () => void,
    fromRevision: number,
  ) {
    this.next = fromRevision;
    // Listeners run in the order added: etcd3's own (added when the watcher was built) move
    // its resume point first, these put it back where the events say.
    raw.on("connected", () => {
      this.isConnected = true;
      this.resumeFrom();
    });
    raw.on("data", (res: IWatchResponse) => {
      this.onData(res);
      this.resumeFrom();
    });
    // etcd3 has already dropped a watcher it reports an error for: no cancel round-trip.
    raw.on("error", (err: Error) => this.fail(err, false));
  }

  connected(timeoutMs: number): Promise<void> {
    if (this.isConnected) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new GRPCDeadlineExceededError(`watch not established within ${timeoutMs} ms`)), timeoutMs);
      this.raw.once("connected", () => {
        clearTimeout(timer);
        resolve();
      });
      this.raw.once("error", (err: Error) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  async cancel(): Promise<void> {
    if (this.cancelled) return;
    this.cancelled = true;
    this.queue.length = 0;
    this.onDone();
    // etcd3 waits for etcd to confirm the cancel; if etcd is gone we stop waiting
    // (the stream is dead anyway, and nothing is delivered after `cancelled`).
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      this.raw.cancel().catch(() => undefined),
      new Promise<void>((r) => {
        timer = setTimeout(r, this.timeoutMs);
      }),
    ]);
    clearTimeout(timer);
  }

  /** Points etcd3's re-attach request at the first revision not received. */
  private resumeFrom(): void {
    (this.raw as unknown as { request: { start_revision?: string } }).request.start_revision = String(this.next);
  }

  private onData(res: IWatchResponse): void {
    if (this.cancelled) return;
    if (res.events.length === 0) {
      // A progress notification: etcd sends these only to a watch that has been sent every
      // event up to the header's revision (its documented use: resuming from a recent revision,
      // so a quiet watch's resume point is not compacted away).
      if (!res.created && !res.canceled) this.next = Math.max(this.next, rev(res.header) + 1);
      return;
    }
    // Events below `next` were delivered already (a replay after a resume from further back);
    // a revision's events come in one response (no fragmenting asked).
    const fresh = res.events.filter((ev) => Number(ev.kv.mod_revision) >= this.next);
    if (fresh.length === 0) return;
    this.next = Number(fresh[fresh.length - 1]!.kv.mod_revision) + 1;
    const batch = fresh.map((ev): WatchEvent => {
      const prev = ev.prev_kv && ev.prev_kv.key.length > 0 ? this.toKv(ev.prev_kv) : undefined;
      if (ev.type === "Put") {
        return prev && this.opts.prevKv ? { type: "put", kv: this.toKv(ev.kv), prev } : { type: "put", kv: this.toKv(ev.kv) };
      }
      const kv = this.toKv(ev.kv);
      const del: WatchEvent = { type: "delete", key: kv.key, modRevision: kv.modRevision };
      return prev && this.opts.prevKv ? { ...del, prev } : del;
    });
    this.queue.push(batch);
    if (!this.pumping) void this.pump();
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (let batch = this.queue.shift(); batch && !this.cancelled; batch = this.queue.shift()) {
        try {
          await this.opts.onEvents(batch);
        } catch (err) {
          // The consumer's copy is now in an unknown state: break the watch so it re-lists.
          this.fail(new NoidError("INTERNAL", `watch ${this.prefix}: handler failed: ${(err as Error).message}`, { cause: err }), true);
        }
      }
    } finally {
      this.pumping = false;
    }
  }

  private fail(err: Error, detach: boolean): void {
    if (this.cancelled) return;
    if (!this.isConnected) {
      // watch() is still waiting and rejects with this error instead; etcd3 has dropped the watcher.
      this.cancelled = true;
      this.onDone();
      return;
    }
    // etcd 3.4 cancels a watch whose start revision was compacted with only
    // compact_revision set and no reason, which etcd3 reports as "Watcher canceled: ".
    const compacted = /compact/i.test(err.message) || /^Watcher canceled:\s*$/.test(err.message);
    const mapped = compacted
      ? new NoidError("FAILED_PRECONDITION", `watch ${this.prefix}: revision ${this.raw.lastRevision() ?? "?"} has been compacted`, { cause: err })
      : err instanceof NoidError
        ? err
        : mapEtcdError(`watch ${this.prefix}`, err);
    if (detach) {
      void this.cancel();
    } else {
      this.cancelled = true;
      this.queue.length = 0;
      this.onDone();
    }
    this.opts.onError?.(mapped);
  }
}

export async function createEtcdStore(opts: EtcdStoreOptions): Promise<EtcdStore> {
  const timeoutMs = opts.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS;
  const options: IOptions = {
    hosts: opts.endpoints,
    dialTimeout: opts.dialTimeoutMs ?? DEFAULT_DIAL_TIMEOUT_MS,
    grpcOptions: {
      // Reconnect quickly after etcd restarts; detect half-dead connections.
      "grpc.initial_reconnect_backoff_ms": 100,
      "grpc.max_reconnect_backoff_ms": 1000,
      "grpc.keepalive_time_ms": 10_000,
      "grpc.keepalive_timeout_ms": 5_000,
      // Informers list whole prefixes: 100,000 VM records are ~24 MB, over
      // gRPC's default 4 MB receive limit (found by the benchmark).
      "grpc.max_receive_message_length": 512 * 1024 * 1024,
      // grpc-js reads interceptors from the client options etcd3 passes through.
      interceptors: [requireLeader],
    } as IOptions["grpcOptions"],
    faultHandling: {
      host: () => noop,
      global: noop,
      watchBackoff: new ExponentialBackoff({ initialDelay: 100, maxDelay: 2000 }) as never,
    },
  };
  if (opts.tls) {
    options.credentials = {
      rootCertificate: opts.tls.ca as Buffer,
      ...(opts.tls.key ? { privateKey: opts.tls.key } : {}),
      ...(opts.tls.cert ? { certChain: opts.tls.cert } : {}),
    };
  }
  const kv = new EtcdKvClient({ endpoints: opts.endpoints, ...(opts.tls ? { tls: opts.tls } : {}) });
  const store = new EtcdStore(new Etcd3(options), kv, opts.prefix, timeoutMs, opts.endpoints.length, opts.sharedKeepAlive ?? true, opts.keepAliveStreams);
  try {
    await store.revision(); // fail fast on a wrong endpoint instead of on the first real call
  } catch (err) {
    await store.close();
    throw err;
  }
  return store;
}
