// Lease renewals multiplexed over one long-lived etcd LeaseKeepAlive stream.
//
// Every agent session renews its host's lease on each heartbeat (and the HA
// leader its own). Opening a LeaseKeepAlive stream per renewal, as etcd3's
// keepaliveOnce does, costs an HTTP/2 stream set-up and tear-down per
// heartbeat: ~500 per second for 1,000 hosts at a 2 s interval, which the
// coordinator could not keep up with (BENCHMARKS.md finding 6). Here the
// renewals of many leases share one stream (EtcdStore runs a few keepers,
// KEEPALIVE_STREAMS, a lease always on the same one, because a stream sends
// one message per completed write): a request carries the lease id,
// etcd answers each request in order on its stream, so the answers for one id
// arrive in the order that id's requests were sent and are matched first in,
// first out.
//
// What a caller gets is unchanged: renew() resolves only after etcd renewed
// the lease in answer to a request sent after the call started (so "renewed"
// still means renewed from about now on, which the HA leader's validity
// window relies on), rejects NOT_FOUND if the lease has expired or was
// revoked, and UNAVAILABLE within the request timeout if etcd does not answer.
// Renewals of the same lease asked for before their request went out share
// it (coalesced within a tick). Each lease stays its own lease: a host that
// stops heartbeating still loses its lease on its own.
//
// One exception: etcd answers a renewal of a lease that has expired but is
// not revoked yet only once the revocation is through (lessor.Renew waits
// for it), and it answers a stream's requests one after another, so such a
// renewal would hold up every renewal behind it on the shared stream. The
// keeper knows how long each lease is good for (granted or last renewed at
// t, for TTL seconds: good until t + TTL at least); a lease that may have
// expired, or one it does not know, is renewed on a stream of its own, as
// before.
//
// A stream that breaks (error, end, or no answer for the request timeout
// while requests are outstanding: a frozen or half-dead connection) is
// dropped and a new one opened; the renewals it had not answered are sent
// again on the new stream (renewing is idempotent). A renewal whose streams
// failed `maxAttempts` times is answered with the error instead, so an etcd
// that is down surfaces as UNAVAILABLE quickly rather than at the deadline.
import { NoidError } from "../../common/errors.js";

/** The part of a gRPC duplex stream (etcd3's IDuplexStream) the keeper uses. */
export interface KeepAliveStream {
  write(req: { ID: string }): void;
  cancel(): void;
  on(event: "data", fn: (res: { ID: string | number; TTL: string | number }) => void): unknown;
  on(event: "error", fn: (err: Error) => void): unknown;
  on(event: "end", fn: () => void): unknown;
}

export interface LeaseKeeperOptions {
  /** Opens a new LeaseKeepAlive stream (no deadline: it lives as long as it works). */
  open: () => Promise<KeepAliveStream>;
  /** A renewal not answered within this is rejected UNAVAILABLE; a stream with no answer for this long is replaced. */
  timeoutMs: number;
  /** Stream failures a renewal goes through before its caller gets the error. */
  maxAttempts: number;
  /** etcd's error to ours (UNAVAILABLE for transport errors). */
  mapError: (what: string, err: unknown) => NoidError;
  /** Delay before reopening after `failures` consecutive stream failures; default 0, 100, 200, 400 ... 1000 ms. */
  backoffMs?: (failures: number) => number;
  /** Renews once on a stream of its own (for a lease that may have expired); resolves with the TTL, rejects as renew() does. */
  renewAlone: (id: string) => Promise<number>;
  /** A lease within this of the end of its last known TTL is renewed alone; default 1000 ms. */
  expiryMarginMs?: number;
  /** false: every renewal on a stream of its own (the behaviour before the shared stream; for comparison). */
  shared?: boolean;
}

export interface LeaseKeeperStats {
  /** LeaseKeepAlive streams opened (one while etcd stays reachable). */
  streamsOpened: number;
  /** Streams that failed or were replaced (error, end, stall, failed open). */
  streamFailures: number;
  /** Renewal requests written (fewer than renew() calls when coalesced). */
  requestsSent: number;
  /** Answers matched to a request. */
  answers: number;
  /** renew() calls that joined a request not yet sent for the same lease. */
  coalesced: number;
  /** Requests sent again on a new stream after theirs broke. */
  resent: number;
  /** Answers matching no outstanding request (dropped). */
  stray: number;
  /** Renewals sent on a stream of their own (lease unknown or maybe expired). */
  alone: number;
}

interface Waiter {
  resolve: (ttlSeconds: number) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** The callers waiting for one renewal request of one lease. */
interface Batch {
  readonly id: string;
  readonly waiters: Set<Waiter>;
  /** Streams this renewal was pending on when they failed. */
  failures: number;
  /** When its request was last written (ms). */
  sentAt: number;
}

export const defaultBackoffMs = (failures: number): number => (failures <= 1 ? 0 : Math.min(1000, 100 * 2 ** (failures - 2)));

export class LeaseKeeper {
  readonly stats: LeaseKeeperStats = { streamsOpened: 0, streamFailures: 0, requestsSent: 0, answers: 0, coalesced: 0, resent: 0, stray: 0, alone: 0 };
  /** Per lease: until when it is surely alive (ms, local clock), from its grant or last renewal. */
  private readonly goodUntil = new Map<string, number>();
  private sweepAt = 1000;
  /** Renewals not written yet, one per lease. */
  private readonly unsent = new Map<string, Batch>();
  /** Written and not answered, per lease, oldest first. */
  private readonly sent = new Map<string, Batch[]>();
  private outstanding = 0;
  /** When the stream last made progress (opened or answered) while requests were outstanding. */
  private progressAt = 0;
  private stream: KeepAliveStream | undefined;
  private opening = false;
  private flushQueued = false;
  private reopenTimer: NodeJS.Timeout | undefined;
  private stallTimer: NodeJS.Timeout | undefined;
  /** Consecutive stream failures without an answer in between (drives the backoff). */
  private failuresInRow = 0;
  private closed = false;
  private readonly backoffMs: (failures: number) => number;

  constructor(private readonly o: LeaseKeeperOptions) {
    this.backoffMs = o.backoffMs ?? defaultBackoffMs;
  }

  /** Lease `id` was granted (or found alive) at `at` (ms, before the request was sent) for `ttlSeconds`. */
  granted(id: number, ttlSeconds: number, at: number): void {
    this.goodUntil.set(String(id), at + ttlSeconds * 1000);
    if (this.goodUntil.size >= this.sweepAt) {
      // Leases left to expire (ended sessions) are forgotten once long gone.
      const old = Date.now() - 60_000;
      for (const [k, until] of this.goodUntil) if (until < old) this.goodUntil.delete(k);
      this.sweepAt = Math.max(1000, 2 * this.goodUntil.size);
    }
  }

  /** Lease `id` was revoked. */
  forget(id: number): void {
    this.goodUntil.delete(String(id));
  }

  /** Renews lease `id` once; resolves with the TTL etcd granted (seconds). */
  renew(id: number): Promise<number> {
    const key = String(id);
    const what = `keep lease ${key} alive`;
    if (this.closed) return Promise.reject(new NoidError("UNAVAILABLE", `etcd unavailable: ${what}: store is closed`));
    const until = this.goodUntil.get(key);
    const startedAt = Date.now();
    if (this.o.shared === false || until === undefined || startedAt >= until - (this.o.expiryMarginMs ?? 1000)) {
      this.stats.alone++;
      return this.o.renewAlone(key).then(
        (ttl) => {
          this.goodUntil.set(key, startedAt + ttl * 1000);
          return ttl;
        },
        (err: unknown) => {
          if (err instanceof NoidError && err.code === "NOT_FOUND") this.goodUntil.delete(key);
          throw err;
        },
      );
    }
    let batch = this.unsent.get(key);
    if (batch) this.stats.coalesced++;
    else {
      batch = { id: key, waiters: new Set(), failures: 0, sentAt: 0 };
      this.unsent.set(key, batch);
    }
    const b = batch;
    return new Promise<number>((resolve, reject) => {
      const w: Waiter = {
        resolve,
        reject,
        // Judged after pending I/O: when a busy event loop gets to this timer, an answer may be waiting in the socket.
        timer: setTimeout(() => setImmediate(() => {
          if (!b.waiters.delete(w)) return; // answered meanwhile
          // Nobody left to tell: an unsent request need not go out (a sent one stays, its answer must still be matched).
          if (b.waiters.size === 0 && this.unsent.get(key) === b) this.unsent.delete(key);
          reject(new NoidError("UNAVAILABLE", `etcd unavailable: ${what}: no answer within ${this.o.timeoutMs} ms`));
        }), this.o.timeoutMs),
      };
      b.waiters.add(w);
      this.scheduleFlush();
    });
  }

  /** Fails every pending renewal UNAVAILABLE and drops the stream. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.reopenTimer);
    clearTimeout(this.stallTimer);
    this.dropStream();
    const err = new NoidError("UNAVAILABLE", "etcd unavailable: keep lease alive: store is closed");
    for (const b of this.pending()) settle(b, (w) => w.reject(err));
    this.unsent.clear();
    this.sent.clear();
    this.outstanding = 0;
  }

  private scheduleFlush(): void {
    if (this.flushQueued) return;
    this.flushQueued = true;
    // setImmediate, not a microtask: renewals asked for in the same turn of the event loop share the flush.
    setImmediate(() => {
      this.flushQueued = false;
      this.flush();
    });
  }

  private flush(): void {
    if (this.closed || this.unsent.size === 0) return;
    if (!this.stream) {
      if (!this.opening && !this.reopenTimer) void this.openStream();
      return; // flushed once the stream is open
    }
    const s = this.stream;
    if (this.outstanding === 0) this.progressAt = Date.now();
    const batches = [...this.unsent.values()];
    this.unsent.clear();
    try {
      for (const b of batches) {
        // Counted as sent before the write: if the write throws, failed() sends it again.
        const q = this.sent.get(b.id);
        if (q) q.push(b);
        else this.sent.set(b.id, [b]);
        this.outstanding++;
        b.sentAt = Date.now();
        s.write({ ID: b.id });
        this.stats.requestsSent++;
      }
    } catch (err) {
      for (const b of batches) if (!this.sent.get(b.id)?.includes(b)) this.unsent.set(b.id, b);
      this.failed(err);
      return;
    }
    this.armStallTimer();
  }

  private async openStream(): Promise<void> {
    this.opening = true;
    let s: KeepAliveStream;
    try {
      s = await this.o.open();
    } catch (err) {
      this.opening = false;
      this.failed(err);
      return;
    }
    this.opening = false;
    if (this.closed) {
      s.cancel();
      return;
    }
    this.stats.streamsOpened++;
    this.stream = s;
    // Events of a stream we dropped (its late answers, its CANCELLED error) reach nobody.
    s.on("data", (res) => {
      if (this.stream === s) this.answer(String(res.ID), Number(res.TTL));
    });
    s.on("error", (err) => {
      if (this.stream === s) this.failed(err);
    });
    s.on("end", () => {
      if (this.stream === s) this.failed(new Error("lease keepalive stream ended"));
    });
    this.flush();
  }

  private answer(id: string, ttl: number): void {
    const q = this.sent.get(id);
    const b = q?.shift();
    if (!b) {
      this.stats.stray++;
      return;
    }
    if (q!.length === 0) this.sent.delete(id);
    this.outstanding--;
    this.stats.answers++;
    this.progressAt = Date.now();
    this.failuresInRow = 0;
    if (ttl > 0) {
      this.goodUntil.set(id, b.sentAt + ttl * 1000);
      settle(b, (w) => w.resolve(ttl));
    } else {
      this.goodUntil.delete(id);
      const err = new NoidError("NOT_FOUND", `keep lease ${id} alive: lease not found (expired or revoked)`);
      settle(b, (w) => w.reject(err));
    }
  }

  /** The stream broke (or could not be opened): give up on renewals that failed too often, resend the rest on a new stream. */
  private failed(err: unknown): void {
    this.stats.streamFailures++;
    this.failuresInRow++;
    this.dropStream();
    for (const [id, q] of this.sent) {
      for (const b of q) {
        const later = this.unsent.get(id);
        if (later) {
          // Renewals asked for after this one was sent: one new request answers both.
          for (const w of b.waiters) later.waiters.add(w);
          later.failures = Math.max(later.failures, b.failures);
        } else this.unsent.set(id, b);
        this.stats.resent++;
      }
    }
    this.sent.clear();
    this.outstanding = 0;
    for (const [id, b] of this.unsent) {
      b.failures++;
      if (b.failures >= this.o.maxAttempts || b.waiters.size === 0) {
        this.unsent.delete(id);
        const mapped = this.toUnavailable(`keep lease ${id} alive`, err);
        settle(b, (w) => w.reject(mapped));
      }
    }
    if (this.closed || this.unsent.size === 0) return;
    const delay = this.backoffMs(this.failuresInRow);
    this.reopenTimer = setTimeout(() => {
      this.reopenTimer = undefined;
      this.flush();
    }, delay);
  }

  private dropStream(): void {
    const s = this.stream;
    this.stream = undefined;
    clearTimeout(this.stallTimer);
    this.stallTimer = undefined;
    if (s) {
      try {
        s.cancel();
      } catch {
        // already gone
      }
    }
  }

  /** While requests are outstanding, a stream that answers nothing for the timeout is replaced. */
  private armStallTimer(): void {
    if (this.stallTimer || this.outstanding === 0) return;
    const wait = Math.max(1, this.progressAt + this.o.timeoutMs - Date.now());
    const s = this.stream;
    this.stallTimer = setTimeout(() => {
      // As for callers' timeouts: judged after pending I/O, so answers a busy event loop has not read yet count.
      setImmediate(() => {
        if (this.stream !== s) return; // replaced meanwhile (its own timer is armed)
        this.stallTimer = undefined;
        if (!this.stream || this.outstanding === 0) return;
        if (Date.now() - this.progressAt >= this.o.timeoutMs) {
          this.failed(new NoidError("UNAVAILABLE", `etcd unavailable: lease keepalive stream: no answer within ${this.o.timeoutMs} ms`));
        } else this.armStallTimer();
      });
    }, wait);
    this.stallTimer.unref();
  }

  private *pending(): Iterable<Batch> {
    yield* this.unsent.values();
    for (const q of this.sent.values()) yield* q;
  }

  private toUnavailable(what: string, err: unknown): NoidError {
    const mapped = this.o.mapError(what, err);
    if (mapped.code !== "INTERNAL") return mapped;
    // Whatever broke the keepalive stream, etcd did not renew the lease: the caller may try again later.
    return new NoidError("UNAVAILABLE", `etcd unavailable: ${what}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }
}

function settle(b: Batch, f: (w: Waiter) => void): void {
  for (const w of b.waiters) {
    clearTimeout(w.timer);
    f(w);
  }
  b.waiters.clear();
}
