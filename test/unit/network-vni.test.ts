// The VNI picker and the MAC derivation.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { pickVni } from "../../coordinator/networks/vni.js";
import { macForVm } from "../../coordinator/networks/mac.js";
import { macFromId } from "../../agent/reconcile/desired.js";

describe("pickVni", () => {
  const range = { min: 4096, max: 4100 };
  it("takes the lowest free VNI in the range", () => {
    expect(pickVni(new Set(), range)).toBe(4096);
    expect(pickVni(new Set([4096, 4097, 4099]), range)).toBe(4098);
    expect(pickVni(new Set([1, 2, 4096]), range)).toBe(4097);
  });
  it("with skip, takes a later free one (spreading racers), falling back to the lowest", () => {
    expect(pickVni(new Set([4097]), range, 1)).toBe(4098);
    expect(pickVni(new Set([4097]), range, 10)).toBe(4096);
  });
  it("says when the range is used up", () => {
    expect(pickVni(new Set([4096, 4097, 4098, 4099, 4100]), range)).toBeUndefined();
  });
  it("always returns a free VNI inside the range (property)", () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 4090, max: 4110 })), fc.nat(20), (taken, skip) => {
        const t = new Set(taken);
        const v = pickVni(t, range, skip);
        const free = [4096, 4097, 4098, 4099, 4100].filter((x) => !t.has(x));
        if (free.length === 0) expect(v).toBeUndefined();
        else {
          expect(free).toContain(v);
          if (skip === 0) expect(v).toBe(free[0]);
        }
      }),
    );
  });
});

describe("macForVm", () => {
  it("is locally administered unicast, stable per id, and the agent's derivation", () => {
    const m = macForVm("0123456789abcdef");
    expect(m).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    expect(macForVm("0123456789abcdef")).toBe(m);
    expect(macForVm("0123456789abcdee")).not.toBe(m);
    expect(m).toBe(macFromId("0123456789abcdef"));
  });
});
