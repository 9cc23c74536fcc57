import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { applyEgress, detectUplink } from "../../agent/network/egress-apply.js";
import { recordingRunner } from "../../common/run.js";
import {
  EGRESS_SYSCTLS,
  type EgressObserved,
  type EgressSpec,
  MAX_SLOT,
  type ObservedRule,
  RULE_PREF,
  assignSlots,
  desiredRouting,
  egressCommand,
  egressDrift,
  egressDrops,
  egressNetworkOf,
  markOf,
  normalizeCidrs,
  parseEgressRoutes,
  parseEgressRules,
  placeNetworks,
  planEgress,
  renderEgress,
  tableOf,
} from "../../agent/network/egress.js";

const spec: EgressSpec = {
  uplink: "eth0",
  protect: ["10.99.0.2/32"],
  networks: [
    { vni: 4101, cidr: "10.20.0.0/24", gateway: "10.20.0.1" },
    { vni: 4102, cidr: "10.20.0.0/24", gateway: "10.20.0.1", denyAll: true },
    { vni: 4103, cidr: "10.30.0.0/24", gateway: "10.30.0.1", allow: ["192.0.2.0/24"], deny: ["192.0.2.9"] },
  ],
};

/**
 * What `nft -j list table inet noid_egress` returns for a rendered table (shape of nftables
 * 1.0.6; each rule's expression reduced to its tokens, numbers as numbers, as nft shows them).
 */
function listed(text: string, edit: (rules: { chain: string; comment: string; expr: unknown[] }[]) => void = () => undefined): string {
  const chains: Record<string, unknown>[] = [];
  const counters: Record<string, unknown>[] = [];
  const rules: { chain: string; comment: string; expr: unknown[] }[] = [];
  let chain = "";
  for (const line of text.split("\n")) {
    const k = /^ {2}counter (\S+) \{(?: packets (\d+) bytes (\d+))? \}$/.exec(line);
    if (k) counters.push({ family: "inet", table: "noid_egress", name: k[1], packets: Number(k[2] ?? 0), bytes: Number(k[3] ?? 0) });
    const c = /^ {2}chain (\S+) \{$/.exec(line);
    if (c) {
      chain = c[1]!;
      chains.push({ family: "inet", table: "noid_egress", name: chain });
      continue;
    }
    const b = /^ {4}type (\S+) hook (\S+) priority (-?\d+); policy accept;$/.exec(line);
    if (b) {
      Object.assign(chains[chains.length - 1]!, { type: b[1], hook: b[2], prio: Number(b[3]), policy: "accept" });
      continue;
    }
    const r = /^ {4}(.*) comment "(.*)"$/.exec(line);
    if (r) {
      const tokens = r[1]!.split(/[\s{},]+/).filter(Boolean).map((t) => (/^0x[0-9a-f]+$/.test(t) ? Number(t) : /^\d+$/.test(t) ? Number(t) : t.replace(/"/g, "")));
      rules.push({ chain, comment: r[2]!, expr: tokens });
    }
  }
  edit(rules);
  return JSON.stringify({
    nftables: [
      { metainfo: { version: "1.0.6", json_schema_version: 1 } },
      { table: { family: "inet", name: "noid_egress", handle: 9 } },
      ...counters.map((counter) => ({ counter })),
      ...chains.map((chain) => ({ chain })),
      ...rules.map((rule, i) => ({ rule: { family: "inet", table: "noid_egress", handle: 100 + i, ...rule } })),
    ],
  });
}

/** The host exactly as `spec` wants it (slots as assigned on an empty host). */
function matching(s: EgressSpec): EgressObserved {
  const nets = placeNetworks(s, []);
  const r = desiredRouting(nets);
  return { nft: listed(renderEgress(s, nets)), rules: r.rules, routes: r.routes, sysctls: { ...EGRESS_SYSCTLS } };
}

const empty: EgressObserved = { nft: undefined, rules: [], routes: [], sysctls: {} };

describe("egress CIDR lists", () => {
  it("normalizes to network addresses, sorted, without duplicates or covered entries", () => {
    expect(normalizeCidrs("f", ["10.1.2.3/16", "10.0.0.0/8", "192.0.2.9", "192.0.2.0/24", "1.2.3.4/32", "1.2.3.4"])).toEqual([
      "1.2.3.4/32",
      "10.0.0.0/8",
      "192.0.2.0/24",
    ]);
    expect(normalizeCidrs("f", ["0.0.0.0/0", "8.8.8.8"])).toEqual(["0.0.0.0/0"]);
  });

  it("refuses what is not an IPv4 CIDR, naming the field", () => {
    for (const bad of ["10.0.0.0/33", "fd00::/8", "ten", "10.0.0/8", ""]) {
      expect(() => normalizeCidrs("egress_allow", [bad])).toThrow(/egress_allow/);
    }
  });
});

describe("egress spec validation", () => {
  const bad = (s: Partial<EgressSpec>, field: RegExp) => expect(() => placeNetworks({ ...spec, ...s }, [])).toThrow(field);
  it("names the field at fault", () => {
    bad({ uplink: "vmnet4101" }, /uplink/);
    bad({ uplink: "a b" }, /uplink/);
    bad({ networks: [spec.networks[0]!, spec.networks[0]!] }, /vni: network 4101 appears twice/);
    bad({ networks: [{ vni: 0, cidr: "10.0.0.0/24", gateway: "10.0.0.1" }] }, /vni/);
    bad({ networks: [{ vni: 7, cidr: "10.0.0.0/24", gateway: "10.0.1.1" }] }, /gateway: 10.0.1.1 is not in 10.0.0.0\/24/);
    bad({ networks: [{ vni: 7, cidr: "10.0.0.1", gateway: "10.0.0.1" }] }, /cidr/);
    bad({ networks: [{ vni: 7, cidr: "10.0.0.0/24", gateway: "10.0.0.1", deny: ["x"] }] }, /egress_deny/);
  });

  it("takes the MeshNetwork message's fields", () => {
    expect(egressNetworkOf({ vni: 5, cidr: "10.0.0.0/24", gateway: "10.0.0.1", egressDenyAll: false, egressAllow: ["1.0.0.0/8"], egressDeny: [] })).toEqual({
      vni: 5, cidr: "10.0.0.0/24", gateway: "10.0.0.1", denyAll: false, allow: ["1.0.0.0/8"], deny: [],
    });
  });
});

describe("egress slots", () => {
  const iif = (vni: number, slot: number): ObservedRule => ({ pref: RULE_PREF, iif: `vmnet${vni}`, table: tableOf(slot) });

  it("keeps a network's slot and gives new networks the lowest slot no rule uses", () => {
    const observed = [iif(4102, 1), iif(4999, 2), { pref: RULE_PREF, fwmark: markOf(4), table: tableOf(4) }];
    expect([...assignSlots([4101, 4102, 4103], observed)]).toEqual([[4102, 1], [4101, 3], [4103, 5]]);
  });

  it("falls back to the route in a network's table when its iif rule is gone", () => {
    const routes = [{ table: tableOf(7), dst: "10.0.0.0/24", dev: "vmnet4101" }];
    expect([...assignSlots([4101, 4102], [], routes)]).toEqual([[4101, 7], [4102, 1]]);
  });

  it("property: slots are distinct, in range, and observed ones are kept", () => {
    fc.assert(
      fc.property(
        fc.uniqueArray(fc.integer({ min: 1, max: 60 }), { maxLength: 20 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 60 }), fc.integer({ min: 1, max: 40 })), { maxLength: 20 }),
        (vnis, had) => {
          const observed = had.map(([v, s]) => iif(v, s));
          const slots = assignSlots(vnis, observed);
          const values = [...slots.values()];
          expect(new Set(values).size).toBe(vnis.length);
          for (const s of values) expect(s >= 1 && s <= MAX_SLOT).toBe(true);
          // A VNI whose first observed rule names a slot nobody else claimed first keeps it.
          const first = new Map<number, number>();
          for (const [v, s] of had) if (!first.has(v)) first.set(v, s);
          const claimed = new Set<number>();
          for (const v of vnis) {
            const s = first.get(v);
            if (s !== undefined && !claimed.has(s)) {
              expect(slots.get(v)).toBe(s);
              claimed.add(s);
            }
          }
        },
      ),
    );
  });
});

describe("egress ruleset", () => {
  const text = renderEgress(spec, placeNetworks(spec, []));

  it("replaces only our table, in one transaction", () => {
    expect(text.split("\n").slice(0, 3)).toEqual(["table inet noid_egress", "delete table inet noid_egress", "table inet noid_egress {"]);
  });

  it("gives each network a mark, a conntrack zone (directional for egress) and NAT to the uplink", () => {
    expect(text).toContain(`iifname "vmnet4101" meta mark set 0x6e6f0001 comment "vmnet4101 mark"`);
    expect(text).toContain(`iifname "vmnet4101" ip daddr 10.20.0.0/24 ct zone set 1 return`);
    expect(text).toContain(`iifname "vmnet4101" fib daddr type { local, broadcast, multicast } ct zone set 1 return`);
    expect(text).toContain(`iifname "vmnet4102" ct original zone set 2 comment "vmnet4102 zone-egress"`);
    expect(text).toContain(`oifname "vmnet4103" ct zone set 3`);
    expect(text).toContain(`ct mark & 0xffff0000 == 0x6e6f0000 meta mark set ct mark`);
    expect(text).toContain(`iifname "vmnet4101" oifname "eth0" meta nfproto ipv4 masquerade`);
  });

  it("isolates networks, clamps MSS, admits only replies inbound", () => {
    expect(text).toContain(`iifname "vmnet4101" oifname "vmnet4101" accept`);
    expect(text).toContain(`iifname "vmnet*" oifname "vmnet*" counter name "drop_between_networks" drop comment "between-networks"`);
    expect(text).toContain(`iifname "vmnet*" tcp flags syn tcp option maxseg size set rt mtu`);
    expect(text).toContain(`oifname "vmnet*" ct state established,related accept`);
    expect(text).toContain(`oifname "vmnet*" counter name "drop_inbound" drop comment "inbound-drop"`);
    expect(text).toContain(`iifname "vmnet*" counter name "drop_egress" drop comment "egress-drop"`);
  });

  it("writes each network's policy: anywhere, deny-all, allow minus deny; protected first", () => {
    const chain = (vni: number) => /chain egress_(\d+) \{\n([^}]*)\n {2}\}/g;
    const body = (vni: number) => [...text.matchAll(chain(vni))].find((m) => m[1] === String(vni))![2]!.split("\n").map((l) => l.trim());
    expect(body(4101)).toEqual([
      `ct status dnat accept comment "exposed-replies"`,
      `ip daddr 10.99.0.2/32 counter name "drop_4101_protect" drop comment "protect"`,
      `accept comment "anywhere"`,
    ]);
    expect(body(4102).slice(2)).toEqual([`counter name "drop_4102_deny_all" drop comment "deny-all"`]);
    expect(body(4103).slice(2)).toEqual([
      `ip daddr 192.0.2.9/32 counter name "drop_4103_deny" drop comment "deny"`,
      `ip daddr 192.0.2.0/24 accept comment "allow"`,
      `counter name "drop_4103_not_allowed" drop comment "not-allowed"`,
    ]);
  });

  it("keeps drop counts over a replacement and reads them back per network and kind", () => {
    const nets = placeNetworks(spec, []);
    const counts = new Map([["drop_4102_deny_all", { packets: 7, bytes: 588 }], ["drop_between_networks", { packets: 2, bytes: 168 }]]);
    const text = renderEgress(spec, nets, counts);
    expect(text).toContain("  counter drop_4102_deny_all { packets 7 bytes 588 }");
    expect(text).toContain("  counter drop_4103_not_allowed { }");
    const drops = egressDrops(listed(text));
    expect(drops).toContainEqual({ vni: 4102, kind: "deny-all", packets: 7, bytes: 588 });
    expect(drops).toContainEqual({ kind: "between-networks", packets: 2, bytes: 168 });
    expect(drops).toContainEqual({ vni: 4101, kind: "protect", packets: 0, bytes: 0 });
    const plan = planEgress(spec, { ...matching(spec), nft: listed(text, (rs) => rs.pop()) });
    expect(plan[0]!.kind === "nft" && plan[0]!.script).toContain("counter drop_4102_deny_all { packets 7 bytes 588 }");
  });
});

describe("egress plan", () => {
  it("on a bare host: sysctls, routes, rules, then the table", () => {
    const plan = planEgress(spec, empty);
    const kinds = plan.map((a) => a.kind);
    expect(kinds).toEqual([...Object.keys(EGRESS_SYSCTLS).map(() => "sysctl"), "route-add", "route-add", "route-add", ...Array(6).fill("rule-add"), "nft"]);
    expect(plan.map(egressCommand).slice(4, 5)).toEqual([{ argv: ["ip", "route", "replace", "10.20.0.0/24", "dev", "vmnet4101", "table", "1852768257"] }]);
    expect(egressCommand(plan[7]!).argv).toEqual(["ip", "rule", "add", "pref", "5000", "iif", "vmnet4101", "lookup", "1852768257"]);
    expect(egressCommand(plan[8]!).argv).toEqual(["ip", "rule", "add", "pref", "5000", "fwmark", "0x6e6f0001", "lookup", "1852768257"]);
    expect(egressCommand(plan[0]!).argv).toEqual(["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    const nft = egressCommand(plan[plan.length - 1]!);
    expect(nft.argv).toEqual(["nft", "-f", "-"]);
    expect(nft.input).toBe(renderEgress(spec, placeNetworks(spec, [])));
  });

  it("is empty when the host matches", () => {
    expect(planEgress(spec, matching(spec))).toEqual([]);
  });

  it("replaces the table on drift: a rule gone, a literal changed, a hook changed, extra chain", () => {
    const nets = placeNetworks(spec, []);
    const text = renderEgress(spec, nets);
    const drift = (edit: Parameters<typeof listed>[1]) => egressDrift(spec, nets, listed(text, edit));
    expect(drift((rs) => rs.splice(rs.findIndex((r) => r.comment === "between-networks"), 1)).join()).toMatch(/chain forward: rules differ/);
    expect(
      drift((rs) => {
        const r = rs.find((x) => x.chain === "egress_4103" && x.comment === "allow")!;
        r.expr = r.expr.map((t) => (t === "192.0.2.0/24" ? "0.0.0.0/0" : t));
      }),
    ).toEqual([`chain egress_4103: rule "allow" lacks 192.0.2.0/24`]);
    expect(
      egressDrift(spec, nets, listed(text).replace(`"hook":"forward","prio":0`, `"hook":"forward","prio":10`)),
    ).toEqual(["chain forward has other hook, priority, type or policy"]);
    expect(egressDrift(spec, nets, undefined)).toEqual(["table inet noid_egress missing"]);
    const other = { ...spec, uplink: "eth1" };
    expect(egressDrift(other, nets, listed(text)).join()).toMatch(/lacks eth1/);
    expect(planEgress(spec, { ...matching(spec), nft: listed(text, (rs) => rs.pop()) }).map((a) => a.kind)).toEqual(["nft"]);
  });

  it("removes what a dropped network had, after the table stops using it, and keeps the others' slots", () => {
    const smaller: EgressSpec = { ...spec, networks: spec.networks.filter((n) => n.vni !== 4101) };
    const plan = planEgress(smaller, matching(spec));
    expect(plan.map((a) => a.kind)).toEqual(["nft", "rule-del", "rule-del", "route-del"]);
    expect(plan.filter((a) => a.kind === "rule-del").map((a) => egressCommand(a).argv.join(" "))).toEqual([
      "ip rule del pref 5000 iif vmnet4101 lookup 1852768257",
      "ip rule del pref 5000 fwmark 0x6e6f0001 lookup 1852768257",
    ]);
    const nft = plan[0]!.kind === "nft" ? plan[0]!.script : "";
    expect(nft).not.toContain("vmnet4101");
    expect(nft).toContain(`iifname "vmnet4102" meta mark set 0x6e6f0002`); // slot 2 kept
  });

  it("repairs a deleted ip rule and a deleted route, and removes duplicates", () => {
    const m = matching(spec);
    // 4101 lost its iif rule (its route still tells its slot), 4102 its route (its rule does).
    const gone = planEgress(spec, { ...m, rules: m.rules.slice(1), routes: m.routes.filter((_, i) => i !== 1) });
    expect(gone).toEqual([
      { kind: "route-add", route: { table: tableOf(2), dst: "10.20.0.0/24", dev: "vmnet4102" } },
      { kind: "rule-add", rule: { pref: RULE_PREF, iif: "vmnet4101", table: tableOf(1) } },
    ]);
    const dup = planEgress(spec, { ...m, rules: [...m.rules, m.rules[3]!] });
    expect(dup.map((a) => a.kind)).toEqual(["rule-del"]);
  });

  it("fixes only the sysctls that differ", () => {
    const plan = planEgress(spec, { ...matching(spec), sysctls: { ...EGRESS_SYSCTLS, "net.ipv4.ip_forward": "0" } });
    expect(plan).toEqual([{ kind: "sysctl", key: "net.ipv4.ip_forward", value: "1" }]);
  });
});

describe("egress observation parsing", () => {
  it("keeps only rules and routes of our tables (iproute2 6.1 JSON)", () => {
    const rules = `[{"priority":0,"src":"all","table":"local"},{"priority":5000,"src":"all","iif":"vmnet1","table":"1852768257"},{"priority":5000,"src":"all","fwmark":"0x6e6f0001","table":"1852768257"},{"priority":100,"src":"all","fwmark":"0xca6c","table":"51820"},{"priority":32766,"src":"all","table":"main"}]`;
    expect(parseEgressRules(rules)).toEqual([
      { pref: 5000, iif: "vmnet1", table: 1852768257 },
      { pref: 5000, fwmark: 0x6e6f0001, table: 1852768257 },
    ]);
    const routes = `[{"dst":"10.20.0.0/24","dev":"vmnet1","table":"1852768257","scope":"link","flags":[]},{"dst":"10.20.0.0/24","dev":"vmnet1","protocol":"kernel","scope":"link","prefsrc":"10.20.0.1","flags":[]},{"type":"local","dst":"10.20.0.1","dev":"vmnet1","table":"local","protocol":"kernel","scope":"host","prefsrc":"10.20.0.1","flags":[]}]`;
    expect(parseEgressRoutes(routes)).toEqual([{ table: 1852768257, dst: "10.20.0.0/24", dev: "vmnet1" }]);
    expect(parseEgressRules("")).toEqual([]);
  });
});

describe("egress apply", () => {
  it("refuses a bad spec before running any command", async () => {
    const runner = recordingRunner();
    await expect(applyEgress({ ...spec, uplink: "eth0;x" }, { runner })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", field: "uplink" });
    await expect(applyEgress({ ...spec, protect: ["nope"] }, { runner })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", field: "protect" });
    expect(runner.calls).toEqual([]);
  });
});

describe("egress uplink detection", () => {
  it("takes the default route's device", async () => {
    const runner = recordingRunner((argv) => (argv.includes("default") ? { stdout: `[{"dst":"default","gateway":"192.168.1.1","dev":"enp3s0","flags":[]}]` } : {}));
    expect(await detectUplink({ runner, netns: "h" }, "10.0.0.1")).toBe("enp3s0");
    expect(runner.calls.map((c) => c.opts.netns)).toEqual(["h"]);
  });
});
