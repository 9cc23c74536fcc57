// The nftables side of egress, pure: the table `inet noid_egress` for a placed spec (see
// egress-spec.ts for the design), rendered as one atomic `nft -f` transaction, and its drift
// check against `nft -j list table inet noid_egress`.
import ipaddr from "ipaddr.js";
import { EGRESS_TABLE, type EgressSpec, MARK_BASE, MARK_MASK, type PlacedNetwork, hex, markOf, normalizeCidrs } from "./egress-spec.js";
import { nftCounters, nftObjects } from "../../common/nft-json.js";

interface Chain {
  name: string;
  /** "type filter hook prerouting priority -300"; undefined for a regular chain. */
  base?: { type: string; hook: string; prio: number };
}

interface Rule {
  chain: string;
  text: string;
  /** Unique within its chain; kept by nft, used to compare what is there with what should be. */
  comment: string;
  /** Values that must appear in the rule as nft reads it back. */
  literals: string[];
  /** The named counter of a drop rule. */
  counter?: string;
}

/** What a drop counter counts: all networks' (`vni` undefined) or one network's packets. */
export const DROP_KINDS = ["between-networks", "inbound", "egress", "host", "protect", "deny-all", "deny", "not-allowed"] as const;
export type DropKind = (typeof DROP_KINDS)[number];

export interface EgressDrop {
  vni?: number;
  kind: DropKind;
  packets: number;
  bytes: number;
}

/** nft identifiers: "drop_<kind>" or "drop_<vni>_<kind>" with "-" as "_". */
export const dropCounter = (kind: DropKind, vni?: number): string =>
  `drop_${vni !== undefined ? `${vni}_` : ""}${kind.replace(/-/g, "_")}`;

const set = (cidrs: readonly string[]): string => (cidrs.length === 1 ? cidrs[0]! : `{ ${cidrs.join(", ")} }`);

function tableModel(spec: EgressSpec, nets: readonly PlacedNetwork[]): { chains: Chain[]; rules: Rule[] } {
  const up = spec.uplink;
  const protect = normalizeCidrs("protect", spec.protect ?? []);
  const chains: Chain[] = [
    { name: "pre_raw", base: { type: "filter", hook: "prerouting", prio: -300 } },
    { name: "out_raw", base: { type: "filter", hook: "output", prio: -300 } },
    { name: "pre_mangle", base: { type: "filter", hook: "prerouting", prio: -150 } },
    { name: "forward", base: { type: "filter", hook: "forward", prio: 0 } },
    { name: "inbound" },
    ...nets.map((n) => ({ name: `egress_${n.vni}` })),
    { name: "input", base: { type: "filter", hook: "input", prio: 0 } },
    { name: "post_nat", base: { type: "nat", hook: "postrouting", prio: 100 } },
  ];
  const rules: Rule[] = [];
  const add = (chain: string, comment: string, text: string, literals: (string | number)[] = []): void => {
    rules.push({ chain, comment, text, literals: literals.map(String) });
  };
  const drop = (chain: string, comment: string, match: string, kind: DropKind, vni?: number, literals: string[] = []): void => {
    const counter = dropCounter(kind, vni);
    rules.push({ chain, comment, text: `${match ? `${match} ` : ""}counter name "${counter}" drop`, literals: [...literals, counter], counter });
  };
  const each = (fn: (n: PlacedNetwork, i: string) => void): void => nets.forEach((n) => fn(n, `iifname "${n.bridge}"`));

  each((n, i) => {
    const m = markOf(n.slot);
    const z = n.slot;
    add("pre_raw", `${n.bridge} mark`, `${i} meta mark set ${hex(m)}`, [n.bridge, m]);
    // Inside the network (bridged, also from other hosts through VXLAN) and to the host: no
    // NAT to tell tenants apart, so the zone holds both ways.
    add("pre_raw", `${n.bridge} zone-network`, `${i} ip daddr ${n.cidr} ct zone set ${z} return`, [n.bridge, n.cidr, z]);
    add("pre_raw", `${n.bridge} zone-host`, `${i} fib daddr type { local, broadcast, multicast } ct zone set ${z} return`, [n.bridge, z]);
    add("pre_raw", `${n.bridge} zone-egress`, `${i} ct original zone set ${z}`, [n.bridge, z]);
  });
  for (const n of nets) add("out_raw", `${n.bridge} zone`, `oifname "${n.bridge}" ct zone set ${n.slot}`, [n.bridge, n.slot]);
  each((n, i) => add("pre_mangle", `${n.bridge} ctmark`, `${i} ct mark set ${hex(markOf(n.slot))} return`, [n.bridge, markOf(n.slot)]));
  add("pre_mangle", "reply-mark", `ct mark & ${hex(MARK_MASK)} == ${hex(MARK_BASE)} meta mark set ct mark`, [MARK_BASE]);

  each((n, i) => add("forward", `${n.bridge} bridged`, `${i} oifname "${n.bridge}" accept`, [n.bridge]));
  drop("forward", "between-networks", `iifname "vmnet*" oifname "vmnet*"`, "between-networks", undefined, ["vmnet*"]);
  add("forward", "mss-out", `iifname "vmnet*" tcp flags syn tcp option maxseg size set rt mtu`, ["vmnet*", "maxseg"]);
  add("forward", "mss-in", `oifname "vmnet*" tcp flags syn tcp option maxseg size set rt mtu`, ["vmnet*", "maxseg"]);
  add("forward", "inbound-replies", `oifname "vmnet*" ct state established,related accept`, ["vmnet*"]);
  add("forward", "inbound-hook", `oifname "vmnet*" jump inbound`, ["vmnet*", "inbound"]);
  drop("forward", "inbound-drop", `oifname "vmnet*"`, "inbound", undefined, ["vmnet*"]);
  // Replies of exposed ports (agent/network/ports-ruleset.ts DNATs them) go back wherever the
  // connection came from: the uplink, or the WireGuard interface for HTTP routes.
  add("forward", "exposed-replies", `iifname "vmnet*" ct direction reply ct status dnat accept`, ["vmnet*"]);
  each((n, i) => add("forward", `${n.bridge} egress`, `${i} oifname "${up}" meta nfproto ipv4 jump egress_${n.vni}`, [n.bridge, up, `egress_${n.vni}`]));
  drop("forward", "egress-drop", `iifname "vmnet*"`, "egress", undefined, ["vmnet*"]);

  // Port exposure DNATs in its own table (ports-ruleset.ts); only such connections pass here.
  add("inbound", "exposed", "ct status dnat accept");

  for (const n of nets) {
    const c = `egress_${n.vni}`;
    add(c, "exposed-replies", "ct status dnat accept");
    if (protect.length > 0) drop(c, "protect", `ip daddr ${set(protect)}`, "protect", n.vni, protect);
    if (n.denyAll) {
      drop(c, "deny-all", "", "deny-all", n.vni);
      continue;
    }
    if (n.deny.length > 0) drop(c, "deny", `ip daddr ${set(n.deny)}`, "deny", n.vni, n.deny);
    if (n.allow.length > 0) {
      add(c, "allow", `ip daddr ${set(n.allow)} accept`, n.allow);
      drop(c, "not-allowed", "", "not-allowed", n.vni);
    } else {
      add(c, "anywhere", "accept");
    }
  }

  add("input", "host-replies", `iifname "vmnet*" ct state established,related accept`, ["vmnet*"]);
  add("input", "host-dhcp", `iifname "vmnet*" udp sport 68 udp dport 67 accept`, ["vmnet*", 67]);
  each((n, i) => {
    add("input", `${n.bridge} gateway-ping`, `${i} ip daddr ${n.gateway} icmp type echo-request accept`, [n.bridge, n.gateway]);
    add("input", `${n.bridge} gateway-dns`, `${i} ip daddr ${n.gateway} meta l4proto { tcp, udp } th dport 53 accept`, [n.bridge, n.gateway, 53]);
  });
  drop("input", "host-drop", `iifname "vmnet*"`, "host", undefined, ["vmnet*"]);

  each((n, i) => add("post_nat", `${n.bridge} nat`, `${i} oifname "${up}" meta nfproto ipv4 masquerade`, [n.bridge, up]));
  return { chains, rules };
}

/**
 * The whole table as one `nft -f` transaction that replaces only our table. `counts` carries
 * the drop counters' values over the replacement.
 */
export function renderEgress(
  spec: EgressSpec,
  nets: readonly PlacedNetwork[],
  counts: ReadonlyMap<string, { packets: number; bytes: number }> = new Map(),
): string {
  const { chains, rules } = tableModel(spec, nets);
  const lines = [`table inet ${EGRESS_TABLE}`, `delete table inet ${EGRESS_TABLE}`, `table inet ${EGRESS_TABLE} {`];
  for (const c of rules.flatMap((r) => (r.counter ? [r.counter] : []))) {
    const n = counts.get(c);
    lines.push(`  counter ${c} {${n ? ` packets ${n.packets} bytes ${n.bytes}` : ""} }`);
  }
  for (const c of chains) {
    lines.push(`  chain ${c.name} {`);
    if (c.base) lines.push(`    type ${c.base.type} hook ${c.base.hook} priority ${c.base.prio}; policy accept;`);
    for (const r of rules.filter((x) => x.chain === c.name)) lines.push(`    ${r.text} comment "${r.comment}"`);
    lines.push("  }");
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}


/** Every string and number in an nft JSON expression; prefixes as "a.b.c.d/n", addresses also as "/32". */
export function exprValues(e: unknown, out = new Set<string>()): Set<string> {
  if (typeof e === "string") {
    out.add(e);
    if (ipaddr.IPv4.isValidFourPartDecimal(e)) out.add(`${e}/32`);
  } else if (typeof e === "number") {
    out.add(String(e));
  } else if (Array.isArray(e)) {
    for (const x of e) exprValues(x, out);
  } else if (e && typeof e === "object") {
    const p = (e as { prefix?: { addr?: unknown; len?: unknown } }).prefix;
    if (p && typeof p.addr === "string") out.add(`${p.addr}/${String(p.len)}`);
    for (const [k, v] of Object.entries(e)) {
      out.add(k);
      exprValues(v, out);
    }
  }
  return out;
}

const v4int = (s: string): number => ipaddr.IPv4.parse(s).toByteArray().reduce((a, b) => a * 256 + b, 0);

/** IPv4 intervals an expression matches: addresses, prefixes and ranges (nft merges adjacent set elements into ranges). */
function exprIntervals(e: unknown, out: [number, number][] = []): [number, number][] {
  if (typeof e === "string" && ipaddr.IPv4.isValidFourPartDecimal(e)) out.push([v4int(e), v4int(e)]);
  else if (Array.isArray(e)) for (const x of e) exprIntervals(x, out);
  else if (e && typeof e === "object") {
    const o = e as { prefix?: { addr?: unknown; len?: unknown }; range?: unknown };
    if (o.prefix && typeof o.prefix.addr === "string" && ipaddr.IPv4.isValidFourPartDecimal(o.prefix.addr)) {
      const start = v4int(o.prefix.addr);
      out.push([start, start + 2 ** (32 - Number(o.prefix.len)) - 1]);
      return out;
    }
    if (Array.isArray(o.range) && o.range.length === 2 && o.range.every((x) => typeof x === "string" && ipaddr.IPv4.isValidFourPartDecimal(x))) {
      out.push([v4int(o.range[0] as string), v4int(o.range[1] as string)]);
      return out;
    }
    for (const v of Object.values(e)) exprIntervals(v, out);
  }
  return out;
}

/** An IPv4 CIDR literal is present when the expression's intervals cover it. */
function coveredCidr(literal: string, intervals: readonly [number, number][]): boolean {
  const m = /^(\d+\.\d+\.\d+\.\d+)\/(\d+)$/.exec(literal);
  if (!m) return false;
  const start = v4int(m[1]!);
  const end = start + 2 ** (32 - Number(m[2])) - 1;
  let at = start;
  for (const [a, b] of [...intervals].sort((x, y) => x[0] - y[0])) {
    if (a > at) break;
    if (b >= at) at = b + 1;
    if (at > end) return true;
  }
  return at > end;
}

/** Differences between our table as nft holds it and the spec; empty = no drift. */
export function egressDrift(spec: EgressSpec, nets: readonly PlacedNetwork[], json: string | undefined): string[] {
  if (json === undefined) return [`table inet ${EGRESS_TABLE} missing`];
  const { chains, rules } = tableModel(spec, nets);
  const out: string[] = [];
  const have = nftObjects(json, "chain");
  const haveNames = have.map((c) => String(c.name)).sort();
  const wantNames = chains.map((c) => c.name).sort();
  if (haveNames.join(",") !== wantNames.join(",")) out.push(`chains differ: have [${haveNames.join(", ")}], want [${wantNames.join(", ")}]`);
  const haveRules = nftObjects(json, "rule");
  for (const c of chains) {
    const h = have.find((x) => x.name === c.name);
    if (!h) continue;
    const b = c.base;
    if (b ? h.hook !== b.hook || h.prio !== b.prio || h.type !== b.type || h.policy !== "accept" : h.hook !== undefined) {
      out.push(`chain ${c.name} has other hook, priority, type or policy`);
    }
    const want = rules.filter((r) => r.chain === c.name);
    const got = haveRules.filter((r) => r.chain === c.name);
    const wantC = want.map((r) => r.comment);
    const gotC = got.map((r) => String(r.comment ?? ""));
    if (wantC.join("\n") !== gotC.join("\n")) {
      out.push(`chain ${c.name}: rules differ: have [${gotC.join(", ")}], want [${wantC.join(", ")}]`);
      continue;
    }
    want.forEach((w, i) => {
      const values = exprValues(got[i]?.expr ?? []);
      const intervals = exprIntervals(got[i]?.expr ?? []);
      const missing = w.literals.filter((l) => !values.has(l) && !coveredCidr(l, intervals));
      if (missing.length > 0) out.push(`chain ${c.name}: rule "${w.comment}" lacks ${missing.join(", ")}`);
    });
  }
  const haveCounters = new Set(nftObjects(json, "counter").map((c) => String(c.name)));
  for (const r of rules) if (r.counter && !haveCounters.has(r.counter)) out.push(`counter ${r.counter} missing`);
  return out;
}

/** Counter values by name, from `nft -j list table inet noid_egress`. */
export function counterValues(json: string): Map<string, { packets: number; bytes: number }> {
  return nftCounters(json);
}

/** The drops so far, per kind for all networks and per network and kind (counters that exist). */
export function egressDrops(json: string): EgressDrop[] {
  const out: EgressDrop[] = [];
  for (const [name, v] of counterValues(json)) {
    const m = /^drop_(?:(\d+)_)?([a-z_]+)$/.exec(name);
    const kind = m?.[2]?.replace(/_/g, "-") as DropKind | undefined;
    if (!m || !kind || !DROP_KINDS.includes(kind)) continue;
    out.push({ ...(m[1] !== undefined ? { vni: Number(m[1]) } : {}), kind, ...v });
  }
  return out;
}

