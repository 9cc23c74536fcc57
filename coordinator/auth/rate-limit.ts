// Failed-authentication limiting per source, as a pure step function over a
// per-source state: a sliding window of failure times, and a lock-out until
// a cool-down ends once the window holds `maxFailures`. The FailureLimiter
// class only keeps the map and asks the injected clock for the time.
export interface LimitPolicy {
  /** Failures allowed within `windowMs` before the source is locked out. */
  maxFailures: number;
  windowMs: number;
  /** How long a locked-out source is refused. */
  cooldownMs: number;
}

export interface SourceState {
  /** Failure times (ms) inside the window, oldest first. */
  failures: number[];
  /** Refused until this time (ms); 0 when not locked. */
  lockedUntil: number;
}

export const FRESH: SourceState = { failures: [], lockedUntil: 0 };

export type Admission = { allowed: true } | { allowed: false; retryAfterMs: number };

/** Pure: may this source try to authenticate now? */
export function admit(s: SourceState, now: number): Admission {
  return s.lockedUntil > now ? { allowed: false, retryAfterMs: s.lockedUntil - now } : { allowed: true };
}

/** Pure: the state after one failure at `now`; locks the source when the window fills. */
export function recordFailure(s: SourceState, now: number, p: LimitPolicy): SourceState {
  const failures = [...s.failures.filter((t) => t > now - p.windowMs), now];
  if (failures.length >= p.maxFailures) return { failures: [], lockedUntil: now + p.cooldownMs };
  return { failures, lockedUntil: s.lockedUntil > now ? s.lockedUntil : 0 };
}

/** Pure: true when nothing about this source needs remembering any more. */
export function idle(s: SourceState, now: number, p: LimitPolicy): boolean {
  return s.lockedUntil <= now && s.failures.every((t) => t <= now - p.windowMs);
}

/**
 * Where a call comes from, for limiting: the peer address without its port
 * ("ipv4:10.0.0.1:5123" -> "10.0.0.1", "ipv6:[::1]:5123" -> "::1"). Unix
 * socket callers share one source.
 */
export function sourceOf(peer: string): string {
  const v6 = /^ipv6:\[([^\]]+)\](?::\d+)?$/.exec(peer);
  if (v6) return v6[1]!;
  const v4 = /^(?:ipv4:)?(\d{1,3}(?:\.\d{1,3}){3})(?::\d+)?$/.exec(peer);
  if (v4) return v4[1]!;
  if (peer.startsWith("unix:")) return "unix";
  return peer;
}

export interface Clock {
  now(): Date;
}

/** Bounded memory: past this many sources, idle ones are dropped, then the oldest. */
const MAX_SOURCES = 10_000;

export class FailureLimiter {
  private readonly states = new Map<string, SourceState>();

  constructor(
    readonly policy: LimitPolicy,
    private readonly clock: Clock,
  ) {}

  admit(source: string): Admission {
    return admit(this.states.get(source) ?? FRESH, this.clock.now().getTime());
  }

  /** Records a failure; returns true if this failure locked the source out. */
  fail(source: string): boolean {
    const now = this.clock.now().getTime();
    const prev = this.states.get(source) ?? FRESH;
    const next = recordFailure(prev, now, this.policy);
    this.states.delete(source); // re-insert: Map order is then least recently failed first
    this.states.set(source, next);
    this.prune(now);
    return prev.lockedUntil <= now && next.lockedUntil > now;
  }

  // A success does not reset the window: an attacker holding one good
  // credential cannot use it to keep guessing others.

  get size(): number {
    return this.states.size;
  }

  private prune(now: number): void {
    if (this.states.size <= MAX_SOURCES) return;
    for (const [k, s] of this.states) if (idle(s, now, this.policy)) this.states.delete(k);
    for (const k of this.states.keys()) {
      if (this.states.size <= MAX_SOURCES) break;
      this.states.delete(k);
    }
  }
}

/**
 * Counts authentication failures by reason, for the metrics exporter
 * (`snapshot()` is the getter it reads).
 */
export class AuthFailureCounter {
  private readonly byReason = new Map<string, number>();
  private lockouts = 0;

  inc(reason: string): void {
    this.byReason.set(reason, (this.byReason.get(reason) ?? 0) + 1);
  }

  lockedOut(): void {
    this.lockouts++;
  }

  snapshot(): { total: number; byReason: Record<string, number>; lockouts: number } {
    const byReason = Object.fromEntries([...this.byReason].sort(([a], [b]) => a.localeCompare(b)));
    return { total: [...this.byReason.values()].reduce((a, b) => a + b, 0), byReason, lockouts: this.lockouts };
  }
}

/**
 * Lets at most one audit event per source per window through, counting the
 * rest so the next one that passes can say how many were suppressed: a flood
 * of bad tokens does not become a flood of etcd writes. A global cap per
 * window bounds a flood from many sources.
 */
export class AuditThrottle {
  private readonly last = new Map<string, { at: number; suppressed: number }>();
  private windowStart = 0;
  private inWindow = 0;

  constructor(
    private readonly windowMs: number,
    private readonly globalPerWindow: number,
    private readonly clock: Clock,
  ) {}

  /** undefined: drop this event; otherwise how many were suppressed for this source before it. */
  pass(source: string): number | undefined {
    const now = this.clock.now().getTime();
    if (now - this.windowStart >= this.windowMs) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    const prev = this.last.get(source);
    if ((prev && now - prev.at < this.windowMs) || this.inWindow >= this.globalPerWindow) {
      if (prev) prev.suppressed++;
      else this.last.set(source, { at: now - this.windowMs, suppressed: 1 });
      return undefined;
    }
    this.inWindow++;
    const suppressed = prev?.suppressed ?? 0;
    this.last.set(source, { at: now, suppressed: 0 });
    if (this.last.size > MAX_SOURCES) {
      for (const [k, v] of this.last) if (now - v.at >= this.windowMs && v.suppressed === 0) this.last.delete(k);
    }
    return suppressed;
  }
}
