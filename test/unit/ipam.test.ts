// The address allocator: table tests and properties (fast-check).
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { gatewayOf, intToIp, ipToInt, parseCidr, size, vmCapacity, type Cidr } from "../../coordinator/networks/cidr.js";
import { allocate, expiredReleases, usage } from "../../coordinator/networks/ipam.js";

const cidr = (s: string): Cidr => {
  const p = parseCidr(s);
  if (!p.ok) throw new Error(p.why);
  return p.cidr;
};
const GRACE = 300_000;
const empty = (c: Cidr) => ({ cidr: c, used: new Set<number>(), releasedAt: new Map<number, number>(), last: undefined });

describe("allocate", () => {
  it("hands out .2 first: .0 is the network, .1 the gateway", () => {
    const a = allocate(empty(cidr("10.0.0.0/24")), 0, GRACE);
    expect(a.ok && intToIp(a.ip)).toBe("10.0.0.2");
  });

  it("goes round-robin from the last address handed out, wrapping past the broadcast", () => {
    const c = cidr("10.0.0.0/29"); // .2 .. .6 for VMs
    const a = allocate({ ...empty(c), last: ipToInt("10.0.0.4") }, 0, GRACE);
    expect(a.ok && intToIp(a.ip)).toBe("10.0.0.5");
    const b = allocate({ ...empty(c), used: new Set([ipToInt("10.0.0.2")]), last: ipToInt("10.0.0.6") }, 0, GRACE);
    expect(b.ok && intToIp(b.ip)).toBe("10.0.0.3");
  });

  it("skips an address released within the grace period and takes it after", () => {
    const c = cidr("10.0.0.0/29");
    const rel = new Map([[ipToInt("10.0.0.2"), 1_000]]);
    const used = new Set(["10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ipToInt));
    const early = allocate({ cidr: c, used, releasedAt: rel, last: undefined }, 1_000 + GRACE - 1, GRACE);
    expect(early.ok).toBe(false);
    expect(!early.ok && early.reason).toMatch(/1 released less than 300s ago/);
    const late = allocate({ cidr: c, used, releasedAt: rel, last: undefined }, 1_000 + GRACE, GRACE);
    expect(late.ok && intToIp(late.ip)).toBe("10.0.0.2");
  });

  it("says the network is full, with counts", () => {
    const c = cidr("10.0.0.0/29");
    const used = new Set(["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"].map(ipToInt));
    const a = allocate({ cidr: c, used, releasedAt: new Map(), last: undefined }, 0, GRACE);
    expect(a).toMatchObject({ ok: false, usage: { used: 5, total: 5, nearlyFull: true } });
    expect(!a.ok && a.reason).toMatch(/full: 5 of 5/);
  });

  it("reports usage so a metric can alert at 90%", () => {
    expect(usage(cidr("10.0.0.0/24"), 228)).toMatchObject({ total: 253, nearlyFull: true });
    expect(usage(cidr("10.0.0.0/24"), 227).nearlyFull).toBe(false);
    const a = allocate(empty(cidr("10.0.0.0/24")), 0, GRACE);
    expect(a.usage).toMatchObject({ used: 1, total: 253 });
  });

  it("forgets releases once their grace is over", () => {
    expect(expiredReleases(new Map([[1, 0], [2, 200_000]]), GRACE, GRACE)).toEqual([1]);
  });
});

describe("allocate (properties)", () => {
  type Step = { kind: "alloc" } | { kind: "release"; pick: number } | { kind: "wait"; ms: number };
  const step: fc.Arbitrary<Step> = fc.oneof(
    { weight: 5, arbitrary: fc.constant({ kind: "alloc" as const }) },
    { weight: 2, arbitrary: fc.nat().map((pick) => ({ kind: "release" as const, pick })) },
    { weight: 1, arbitrary: fc.integer({ min: 1, max: 2 * GRACE }).map((ms) => ({ kind: "wait" as const, ms })) },
  );
  const prefix = fc.integer({ min: 26, max: 29 });

  it("never gives one address to two VMs, never network/gateway/broadcast, never a recently released one", () => {
    fc.assert(
      fc.property(prefix, fc.array(step, { maxLength: 200 }), (len, steps) => {
        const c = cidr(`10.7.0.0/${len}`);
        const reserved = new Set([c.base, gatewayOf(c), c.base + size(c) - 1]);
        const held = new Map<number, string>(); // ip -> vm
        const releasedAt = new Map<number, number>();
        let last: number | undefined;
        let now = 1_000_000;
        let n = 0;
        for (const s of steps) {
          if (s.kind === "wait") now += s.ms;
          else if (s.kind === "release") {
            const ips = [...held.keys()];
            if (ips.length === 0) continue;
            const ip = ips[s.pick % ips.length]!;
            held.delete(ip);
            releasedAt.set(ip, now);
          } else {
            const a = allocate({ cidr: c, used: new Set(held.keys()), releasedAt, last }, now, GRACE);
            if (!a.ok) {
              // Refused only when every VM address is held or cooling.
              const cooling = [...releasedAt].filter(([ip, t]) => !held.has(ip) && now - t < GRACE).length;
              expect(held.size + cooling).toBe(vmCapacity(c));
              continue;
            }
            expect(held.has(a.ip)).toBe(false);
            expect(reserved.has(a.ip)).toBe(false);
            expect(a.ip >= c.base && a.ip < c.base + size(c)).toBe(true);
            const rel = releasedAt.get(a.ip);
            if (rel !== undefined) expect(now - rel).toBeGreaterThanOrEqual(GRACE);
            held.set(a.ip, `vm${n++}`);
            last = a.ip;
          }
        }
        expect(new Set(held.values()).size).toBe(held.size);
      }),
      { numRuns: 300 },
    );
  });
});
