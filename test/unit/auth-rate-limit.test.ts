// The failed-authentication limiter, its audit throttle and counter, with an injected clock.
import { describe, expect, it } from "vitest";
import { AuditThrottle, AuthFailureCounter, FailureLimiter, FRESH, admit, recordFailure, sourceOf } from "../../coordinator/auth/rate-limit.js";

const policy = { maxFailures: 10, windowMs: 60_000, cooldownMs: 60_000 };

function clock(start = 1_000_000) {
  let t = start;
  return { now: () => new Date(t), advance: (ms: number) => (t += ms) };
}

describe("failure limiter", () => {
  it("locks a source out at the 10th failure within a minute, for the cool-down, then lets it try again", () => {
    const c = clock();
    const l = new FailureLimiter(policy, c);
    for (let i = 0; i < 9; i++) {
      expect(l.fail("10.0.0.1")).toBe(false);
      c.advance(1000);
    }
    expect(l.admit("10.0.0.1").allowed).toBe(true);
    expect(l.fail("10.0.0.1")).toBe(true);
    const a = l.admit("10.0.0.1");
    expect(a).toEqual({ allowed: false, retryAfterMs: 60_000 });
    expect(l.admit("10.0.0.2").allowed).toBe(true); // per source
    c.advance(59_999);
    expect(l.admit("10.0.0.1").allowed).toBe(false);
    c.advance(1);
    expect(l.admit("10.0.0.1").allowed).toBe(true);
  });

  it("forgets failures older than the window", () => {
    let s = FRESH;
    for (let i = 0; i < 9; i++) s = recordFailure(s, i * 1000, policy);
    s = recordFailure(s, 70_000, policy); // the first nine are out of the window
    expect(s.failures).toEqual([70_000]);
    expect(admit(s, 70_000).allowed).toBe(true);
  });

  it("takes the source from a gRPC peer without its port", () => {
    expect(sourceOf("ipv4:127.0.0.1:5555")).toBe("127.0.0.1");
    expect(sourceOf("ipv6:[::1]:5555")).toBe("::1");
    expect(sourceOf("10.1.2.3:80")).toBe("10.1.2.3");
    expect(sourceOf("unix:/run/noid.sock")).toBe("unix");
  });
});

describe("auth.failure audit throttle", () => {
  it("passes one event per source per window, reports how many it suppressed, and caps the total", () => {
    const c = clock();
    const t = new AuditThrottle(60_000, 2, c);
    expect(t.pass("a")).toBe(0);
    expect(t.pass("a")).toBeUndefined();
    expect(t.pass("a")).toBeUndefined();
    expect(t.pass("b")).toBe(0);
    expect(t.pass("c")).toBeUndefined(); // global cap of 2 per window
    c.advance(60_000);
    expect(t.pass("a")).toBe(2);
    expect(t.pass("c")).toBe(1);
  });
});

describe("failure counter", () => {
  it("counts by reason and lock-outs", () => {
    const n = new AuthFailureCounter();
    n.inc("unknown");
    n.inc("unknown");
    n.inc("bad_password");
    n.lockedOut();
    expect(n.snapshot()).toEqual({ total: 3, byReason: { bad_password: 1, unknown: 2 }, lockouts: 1 });
  });
});
