import { describe, expect, it } from "vitest";
import { type GuardSpec, counterName, guardCounters, guardDrift, renderGuards } from "../../mesh/guards.js";

const spec: GuardSpec = {
  vms: [{ vmId: "vm-a1", port: "a1p", mac: "02:00:00:0a:00:01", ip: "10.20.0.11" }],
  uplinks: [{ port: "vx1001", gateway: "10.20.0.1" }],
};

// What `nft -j list table bridge noid_guard` returns for a table, built from the rendered
// rules' comments (the shape captured from nftables 1.0.6; expressions trimmed to literals).
function listed(s: GuardSpec, opts: { drop?: number; packets?: number } = {}): string {
  const text = renderGuards(s);
  const rules = [...text.matchAll(/^ {4}(iifname .*) comment "(.*)"$/gm)].map((m, i) => ({
    rule: { family: "bridge", table: "noid_guard", chain: "vmports", handle: i + 3, comment: m[2], expr: [{ raw: m[1] }] },
  }));
  const counters = [...text.matchAll(/^ {2}counter (\S+) \{/gm)].map((m) => ({
    counter: { family: "bridge", name: m[1], table: "noid_guard", packets: opts.packets ?? 0, bytes: 0 },
  }));
  if (opts.drop !== undefined) rules.splice(opts.drop, 1);
  return JSON.stringify({
    nftables: [
      { metainfo: { version: "1.0.6", json_schema_version: 1 } },
      { table: { family: "bridge", name: "noid_guard", handle: 2 } },
      ...counters,
      { chain: { family: "bridge", table: "noid_guard", name: "vmports", type: "filter", hook: "prerouting", prio: -200, policy: "accept" } },
      ...rules,
    ],
  });
}

describe("guards", () => {
  it("renders an atomic replace of our table only, with a counter per VM and kind", () => {
    const text = renderGuards(spec, new Map([[counterName("vm-a1", "ip"), { packets: 7, bytes: 700 }]]));
    const lines = text.split("\n");
    expect(lines.slice(0, 3)).toEqual(["table bridge noid_guard", "delete table bridge noid_guard", "table bridge noid_guard {"]);
    expect(text).toContain("counter ip_vm_a1 { packets 7 bytes 700 }");
    expect(text).toContain(`iifname "a1p" ether saddr != 02:00:00:0a:00:01 counter name "mac_vm_a1" drop comment "vm-a1 mac"`);
    expect(text).toContain(`iifname "a1p" ether type arp arp saddr ip != { 0.0.0.0, 10.20.0.11 } counter name "arpip_vm_a1" drop`);
    expect(text).toContain(`iifname "a1p" ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept`);
    expect(text).toContain(`iifname "a1p" ether type ip udp sport 67 counter name "dhcp_vm_a1" drop`);
    expect(text).toContain(`iifname "a1p" ether type ip6 icmpv6 type nd-router-advert counter name "ra_vm_a1" drop`);
    expect(text).toContain(`iifname "vx1001" ether type arp arp daddr ip 10.20.0.1 drop`);
    // DHCP server replies are dropped before the client exception, IP spoofing after it.
    const at = (s: string): number => lines.findIndex((l) => l.includes(s));
    expect(at('"vm-a1 dhcp"')).toBeLessThan(at('"vm-a1 dhcp-client"'));
    expect(at('"vm-a1 dhcp-client"')).toBeLessThan(at('"vm-a1 ip"'));
  });

  it("refuses names that could break out of the ruleset", () => {
    expect(() => renderGuards({ vms: [{ ...spec.vms[0]!, port: 'x" accept #' }] })).toThrow(/port/);
    expect(() => renderGuards({ vms: [{ ...spec.vms[0]!, mac: "02:00:00:0A:00:01" }] })).toThrow(/mac/);
    expect(() => renderGuards({ vms: [spec.vms[0]!, { ...spec.vms[0]!, vmId: "vm_a1" }] })).toThrow(/counter/);
  });

  it("detects drift: missing table, missing rule, other VMs", () => {
    expect(guardDrift(spec, listed(spec))).toEqual([]);
    expect(guardDrift(spec, undefined)).toEqual(["table bridge noid_guard missing"]);
    expect(guardDrift(spec, listed(spec, { drop: 2 })).join()).toMatch(/rules differ/);
    const other = { vms: [{ ...spec.vms[0]!, ip: "10.20.0.12" }], uplinks: spec.uplinks };
    expect(guardDrift(other, listed(spec)).join()).toMatch(/lacks 10\.20\.0\.12/);
  });

  it("reads counters back per VM and kind", () => {
    const c = guardCounters(spec, listed(spec, { packets: 3 }));
    expect(c.find((x) => x.kind === "ip")).toEqual({ vm: "vm-a1", kind: "ip", packets: 3, bytes: 0 });
    expect(c.map((x) => x.kind)).toEqual(["mac", "arpmac", "arpip", "dhcp", "ip", "ra", "ip6", "ethertype"]);
  });
});
