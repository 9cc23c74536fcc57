// Network request validation and CIDR math: pure.
import { describe, expect, it } from "vitest";
import { NoidError } from "../../common/errors.js";
import { formatCidr, overlaps, parseCidr, type Cidr } from "../../coordinator/networks/cidr.js";
import { pickDefaultCidr } from "../../coordinator/networks/default-cidr.js";
import { networkSettings } from "../../coordinator/networks/settings.js";
import { checkEgress, findOverlap, validateCreate } from "../../coordinator/networks/validate.js";

const cidr = (s: string): Cidr => {
  const p = parseCidr(s);
  if (!p.ok) throw new Error(p.why);
  return p.cidr;
};

function fails(f: () => unknown): NoidError {
  try {
    f();
  } catch (e) {
    if (e instanceof NoidError) return e;
    throw e;
  }
  throw new Error("expected a NoidError");
}

const req = (o: Partial<{ name: string; cidr: string; mode: string }> = {}) => ({ name: "backend", cidr: "10.20.0.0/24", egress: undefined, mode: "", ...o });

describe("validateCreate", () => {
  it("accepts private /16../29 ranges and fills defaults", () => {
    for (const c of ["10.0.0.0/16", "172.16.5.0/24", "192.168.1.8/29", "172.31.0.0/16"]) {
      expect(formatCidr(validateCreate(req({ cidr: c })).cidr)).toBe(c);
    }
    const v = validateCreate(req());
    expect(v.mode).toBe("wireguard");
    expect(v.egress).toEqual({ denyAll: false, allow: [], deny: [] });
    expect(validateCreate(req({ mode: "vxlan" })).mode).toBe("vxlan");
  });

  it.each([
    ["8.8.8.0/24", "cidr", /not a private range/],
    ["172.32.0.0/24", "cidr", /not a private range/],
    ["10.0.0.0/8", "cidr", /too large/],
    ["10.0.0.0/15", "cidr", /too large/],
    ["10.0.0.0/30", "cidr", /too small/],
    ["10.0.0.5/24", "cidr", /host bits set; did you mean 10\.0\.0\.0\/24/],
    ["10.0.0.0", "cidr", /not an IPv4 CIDR/],
    ["010.0.0.0/24", "cidr", /not an IPv4 CIDR/],
    ["10.0.0.0/33", "cidr", /prefix length/],
    ["", "cidr", /required/],
  ])("refuses cidr %s", (c, field, why) => {
    const e = fails(() => validateCreate(req({ cidr: c })));
    expect(e.code).toBe("INVALID_ARGUMENT");
    expect(e.field).toBe(field);
    expect(e.message).toMatch(why);
  });

  it("refuses bad names, the reserved name and unknown modes", () => {
    expect(fails(() => validateCreate(req({ name: "Bad_Name" }))).field).toBe("name");
    expect(fails(() => validateCreate(req({ name: "isolated" }))).message).toMatch(/reserved/);
    expect(fails(() => validateCreate(req({ mode: "gre" }))).field).toBe("mode");
  });

  it("checks egress policies", () => {
    expect(checkEgress("egress", { denyAll: false, allow: ["1.2.3.0/24"], deny: ["1.2.3.4/32"] })).toEqual({ denyAll: false, allow: ["1.2.3.0/24"], deny: ["1.2.3.4/32"] });
    expect(fails(() => checkEgress("egress", { denyAll: true, allow: ["1.2.3.0/24"], deny: [] })).message).toMatch(/deny_all/);
    expect(fails(() => checkEgress("egress", { denyAll: false, allow: [], deny: ["1.2.3.4"] })).field).toBe("egress.deny[0]");
  });
});

describe("overlap", () => {
  it("finds a tenant's overlapping network", () => {
    expect(overlaps(cidr("10.0.0.0/16"), cidr("10.0.5.0/24"))).toBe(true);
    expect(overlaps(cidr("10.0.0.0/24"), cidr("10.0.1.0/24"))).toBe(false);
    expect(findOverlap(cidr("10.0.0.128/25"), { a: "10.1.0.0/16", b: "10.0.0.0/24" })).toBe("b");
    expect(findOverlap(cidr("10.2.0.0/24"), { a: "10.1.0.0/16", b: "10.0.0.0/24" })).toBeUndefined();
  });

  it("puts a default network next to the tenant's networks instead of on top of them", () => {
    expect(formatCidr(pickDefaultCidr(cidr("10.0.0.0/24"), [])!)).toBe("10.0.0.0/24");
    expect(formatCidr(pickDefaultCidr(cidr("10.0.0.0/24"), [cidr("10.0.0.0/23"), cidr("10.0.2.0/24")])!)).toBe("10.0.3.0/24");
    expect(formatCidr(pickDefaultCidr(cidr("192.168.255.0/24"), [cidr("192.168.255.0/24")])!)).toBe("192.168.0.0/24");
    expect(pickDefaultCidr(cidr("192.168.0.0/16"), [cidr("192.168.7.0/24")])).toBeUndefined();
  });
});

describe("networkSettings", () => {
  it("has defaults and names the bad field", () => {
    expect(networkSettings(undefined)).toMatchObject({ default_cidr: "10.0.0.0/24", vni_min: 4096, vni_max: 16_777_215, ip_reuse_grace_seconds: 300 });
    expect(fails(() => networkSettings({ default_cidr: "8.8.8.0/24" })).message).toMatch(/networks\.default_cidr/);
    expect(fails(() => networkSettings({ vni_min: 10, vni_max: 5 })).message).toMatch(/vni_min/);
    expect(fails(() => networkSettings({ bogus: 1 })).message).toMatch(/networks/);
  });
});
