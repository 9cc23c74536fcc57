// Egress of tenant networks, pure: spec -> nftables table `inet noid_egress`, policy routing
// (ip rules + one routing table per network), sysctls; observed state -> the actions that
// make the host match. egress-apply.ts runs them.
//
// Tenants may use overlapping CIDRs: two bridges on one host can carry the same gateway and
// the same VM addresses, and there is no VRF. So each network present on the host gets a
// "slot" s (1..65535), kept as long as the network stays, from which derive:
//   - a packet mark M = 0x6e6f0000|s, set on everything entering from the bridge, copied to
//     the connection (ct mark) and back onto its replies, and a routing table T = M chosen by
//     `ip rule fwmark M` / `iif vmnet<vni>`: replies (after un-NAT) and the host's own answers
//     (net.ipv4.fwmark_reflect, tcp_fwmark_accept) go back to the right bridge;
//   - a conntrack zone s, so identical 5-tuples from two tenants never share an entry:
//     traffic that stays in the network or goes to the host uses zone s both ways; egress
//     uses zone s in the original direction only, and its replies (after masquerade to the
//     uplink, unique there) are found in zone 0 (directional zones, made for exactly this).
// Forwarding: within a bridge is left alone; between two tenant bridges it is dropped; from
// a bridge only to the uplink and only as the network's policy says (NAT); towards a bridge
// only replies (and later, exposed ports: the `inbound` chain). The host itself answers
// tenants only for DHCP, DNS and ping on the gateway.
import ipaddr from "ipaddr.js";
import { NoidError, invalid } from "../../common/errors.js";
import { bridgeName, checkVni } from "../../mesh/names.js";

export const EGRESS_TABLE = "noid_egress";
export const MARK_BASE = 0x6e6f0000; // "no"
export const MARK_MASK = 0xffff0000;
export const MAX_SLOT = 0xffff; // conntrack zones are 16 bits
/** Preference of our ip rules: after `local` (0), before `main` (32766). */
export const RULE_PREF = 5000;

/** Host sysctls egress needs (host netns only). */
export const EGRESS_SYSCTLS: Readonly<Record<string, string>> = {
  "net.ipv4.ip_forward": "1",
  // Reverse-path checks use the mark, so a packet from vmnetB is checked against B's table.
  "net.ipv4.conf.all.src_valid_mark": "1",
  // The host's ICMP answers and TCP accepts carry the request's mark: routed to the right bridge.
  "net.ipv4.fwmark_reflect": "1",
  "net.ipv4.tcp_fwmark_accept": "1",
};

export const markOf = (slot: number): number => MARK_BASE + slot;
/** The network's routing table id; the same number as its mark. */
export const tableOf = (slot: number): number => MARK_BASE + slot;
export const slotOfTable = (table: number): number | undefined => {
  const s = table - MARK_BASE;
  return Number.isInteger(s) && s >= 1 && s <= MAX_SLOT ? s : undefined;
};
const hex = (n: number): string => `0x${n.toString(16)}`;

export interface EgressNetwork {
  vni: number;
  /** The tenant CIDR on the bridge vmnet<vni>. */
  cidr: string;
  /** The distributed gateway address on the bridge. */
  gateway: string;
  /** "none": nothing leaves the network through this host. */
  denyAll?: boolean;
  /** When non-empty, only these destinations (minus `deny`) are reached. */
  allow?: readonly string[];
  deny?: readonly string[];
}

export interface EgressSpec {
  /** The host's uplink interface: egress is masqueraded to its address. */
  uplink: string;
  networks: readonly EgressNetwork[];
  /** Destinations no tenant reaches whatever its policy (other hosts, the control plane). */
  protect?: readonly string[];
}

/** The MeshNetwork message (proto) as an egress network. */
export function egressNetworkOf(n: {
  vni: number;
  cidr: string;
  gateway: string;
  egressDenyAll?: boolean;
  egressAllow?: readonly string[];
  egressDeny?: readonly string[];
}): EgressNetwork {
  return { vni: n.vni, cidr: n.cidr, gateway: n.gateway, denyAll: !!n.egressDenyAll, allow: n.egressAllow ?? [], deny: n.egressDeny ?? [] };
}

const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function parseCidr(field: string, s: string): [ipaddr.IPv4, number] {
  let net: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    net = s.includes("/") ? ipaddr.parseCIDR(s) : [ipaddr.parse(s), 32];
  } catch {
    throw invalid(field, `"${s}" is not an IPv4 CIDR`);
  }
  if (net[0].kind() !== "ipv4" || !ipaddr.IPv4.isValidFourPartDecimal(s.split("/")[0] ?? "")) throw invalid(field, `"${s}" is not an IPv4 CIDR`);
  return net as [ipaddr.IPv4, number];
}

const toInt = (a: ipaddr.IPv4): number => a.octets.reduce((n, o) => n * 256 + o, 0);
const fromInt = (n: number): string => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join(".");
const range = ([a, len]: [ipaddr.IPv4, number]): [number, number] => {
  const size = 2 ** (32 - len);
  const start = Math.floor(toInt(a) / size) * size;
  return [start, start + size - 1];
};

/**
 * CIDRs as nft accepts them in one set: network addresses (host bits cleared), sorted,
 * without duplicates or entries inside another entry (nft refuses overlapping intervals).
 */
export function normalizeCidrs(field: string, list: readonly string[]): string[] {
  const nets = list.map((s) => {
    const [a, len] = parseCidr(field, s.trim());
    const [start, end] = range([a, len]);
    return { start, end, text: `${fromInt(start)}/${len}` };
  });
  nets.sort((x, y) => x.start - y.start || y.end - x.end);
  const out: typeof nets = [];
  for (const n of nets) {
    const last = out[out.length - 1];
    if (last && n.end <= last.end) continue; // inside (or equal to) the previous one
    out.push(n);
  }
  return out.map((n) => n.text);
}

/** A validated network with its slot. */
export interface PlacedNetwork {
  vni: number;
  bridge: string;
  cidr: string;
  gateway: string;
  slot: number;
  denyAll: boolean;
  allow: string[];
  deny: string[];
}

export interface ObservedRule {
  pref: number;
  iif?: string;
  fwmark?: number;
  table: number;
}

export interface ObservedRoute {
  table: number;
  dst: string;
  dev: string;
}

export interface EgressObserved {
  /** `nft -j list table inet noid_egress`, undefined when the table does not exist. */
  nft: string | undefined;
  /** Our ip rules (tables in our range) only. */
  rules: ObservedRule[];
  /** Routes in our tables only. */
  routes: ObservedRoute[];
  /** Current values of EGRESS_SYSCTLS' keys. */
  sysctls: Record<string, string>;
}

/**
 * Slots for the spec's networks: a network keeps the slot its `iif` rule (or else the route
 * in its table) shows, so its conntrack zone and marks stay valid; new networks get the
 * lowest slot no rule or route uses.
 */
export function assignSlots(
  vnis: readonly number[],
  observed: readonly ObservedRule[],
  routes: readonly ObservedRoute[] = [],
): Map<number, number> {
  const used = new Set<number>();
  const had = new Map<number, number>();
  const note = (table: number, dev: string | undefined, trusted: boolean): void => {
    const s = slotOfTable(table);
    if (s === undefined) return;
    used.add(s);
    const m = dev !== undefined ? /^vmnet(\d+)$/.exec(dev) : null;
    if (m && trusted && !had.has(Number(m[1]))) had.set(Number(m[1]), s);
  };
  for (const r of observed) note(r.table, r.iif, r.pref === RULE_PREF);
  for (const r of routes) note(r.table, r.dev, true);
  const out = new Map<number, number>();
  const taken = new Set<number>();
  for (const v of vnis) {
    const s = had.get(v);
    if (s !== undefined && !taken.has(s)) {
      out.set(v, s);
      taken.add(s);
    }
  }
  let next = 1;
  for (const v of vnis) {
    if (out.has(v)) continue;
    while (next <= MAX_SLOT && (used.has(next) || taken.has(next))) next++;
    if (next > MAX_SLOT) throw new NoidError("RESOURCE_EXHAUSTED", `egress: no free slot for network ${v} (at most ${MAX_SLOT} networks per host)`);
    out.set(v, next);
    taken.add(next);
  }
  return out;
}

/** Validates the spec and places every network in its slot. */
export function placeNetworks(spec: EgressSpec, observed: readonly ObservedRule[], routes: readonly ObservedRoute[] = []): PlacedNetwork[] {
  if (!IFNAME_RE.test(spec.uplink) || spec.uplink.startsWith("vmnet")) throw invalid("uplink", `"${spec.uplink}" is not an uplink interface name`);
  const seen = new Set<number>();
  for (const n of spec.networks) {
    checkVni(n.vni);
    if (seen.has(n.vni)) throw invalid("vni", `network ${n.vni} appears twice`);
    seen.add(n.vni);
  }
  const slots = assignSlots(
    spec.networks.map((n) => n.vni),
    observed,
    routes,
  );
  return spec.networks.map((n) => {
    const net = parseCidr("cidr", n.cidr);
    if (!n.cidr.includes("/")) throw invalid("cidr", `"${n.cidr}" is not a CIDR`);
    const [start, end] = range(net);
    const gw = parseCidr("gateway", n.gateway);
    if (gw[1] !== 32 || n.gateway.includes("/")) throw invalid("gateway", `"${n.gateway}" is not an IPv4 address`);
    const g = toInt(gw[0]);
    if (g < start || g > end) throw invalid("gateway", `${n.gateway} is not in ${n.cidr}`);
    return {
      vni: n.vni,
      bridge: bridgeName(n.vni),
      cidr: `${fromInt(start)}/${net[1]}`,
      gateway: n.gateway,
      slot: slots.get(n.vni)!,
      denyAll: !!n.denyAll,
      allow: normalizeCidrs("egress_allow", n.allow ?? []),
      deny: normalizeCidrs("egress_deny", n.deny ?? []),
    };
  });
}

// ---- nftables ----

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
}

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
  add("forward", "between-networks", `iifname "vmnet*" oifname "vmnet*" counter drop`, ["vmnet*"]);
  add("forward", "mss-out", `iifname "vmnet*" tcp flags syn tcp option maxseg size set rt mtu`, ["vmnet*", "maxseg"]);
  add("forward", "mss-in", `oifname "vmnet*" tcp flags syn tcp option maxseg size set rt mtu`, ["vmnet*", "maxseg"]);
  add("forward", "inbound-replies", `oifname "vmnet*" ct state established,related accept`, ["vmnet*"]);
  add("forward", "inbound-hook", `oifname "vmnet*" jump inbound`, ["vmnet*", "inbound"]);
  add("forward", "inbound-drop", `oifname "vmnet*" counter drop`, ["vmnet*"]);
  each((n, i) => add("forward", `${n.bridge} egress`, `${i} oifname "${up}" meta nfproto ipv4 jump egress_${n.vni}`, [n.bridge, up, `egress_${n.vni}`]));
  add("forward", "egress-drop", `iifname "vmnet*" counter drop`, ["vmnet*"]);

  // Port exposure (a later issue) DNATs in its own table; such connections pass here.
  add("inbound", "exposed", "ct status dnat accept");

  for (const n of nets) {
    const c = `egress_${n.vni}`;
    add(c, "exposed-replies", "ct status dnat accept");
    if (protect.length > 0) add(c, "protect", `ip daddr ${set(protect)} counter drop`, protect);
    if (n.denyAll) {
      add(c, "deny-all", "counter drop");
      continue;
    }
    if (n.deny.length > 0) add(c, "deny", `ip daddr ${set(n.deny)} counter drop`, n.deny);
    if (n.allow.length > 0) {
      add(c, "allow", `ip daddr ${set(n.allow)} accept`, n.allow);
      add(c, "not-allowed", "counter drop");
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
  add("input", "host-drop", `iifname "vmnet*" counter drop`, ["vmnet*"]);

  each((n, i) => add("post_nat", `${n.bridge} nat`, `${i} oifname "${up}" meta nfproto ipv4 masquerade`, [n.bridge, up]));
  return { chains, rules };
}

/** The whole table as one `nft -f` transaction that replaces only our table. */
export function renderEgress(spec: EgressSpec, nets: readonly PlacedNetwork[]): string {
  const { chains, rules } = tableModel(spec, nets);
  const lines = [`table inet ${EGRESS_TABLE}`, `delete table inet ${EGRESS_TABLE}`, `table inet ${EGRESS_TABLE} {`];
  for (const c of chains) {
    lines.push(`  chain ${c.name} {`);
    if (c.base) lines.push(`    type ${c.base.type} hook ${c.base.hook} priority ${c.base.prio}; policy accept;`);
    for (const r of rules.filter((x) => x.chain === c.name)) lines.push(`    ${r.text} comment "${r.comment}"`);
    lines.push("  }");
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}

interface NftJson {
  nftables?: Record<string, Record<string, unknown>>[];
}

function objects(json: string, type: string): Record<string, unknown>[] {
  let parsed: NftJson;
  try {
    parsed = JSON.parse(json) as NftJson;
  } catch (e) {
    throw new NoidError("INTERNAL", "nft -j: unparsable output", { cause: e });
  }
  return (parsed.nftables ?? []).flatMap((o) => (o[type] ? [o[type]] : []));
}

/** Every string and number in an nft JSON expression; prefixes as "a.b.c.d/n", addresses also as "/32". */
function exprValues(e: unknown, out = new Set<string>()): Set<string> {
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

/** Differences between our table as nft holds it and the spec; empty = no drift. */
export function egressDrift(spec: EgressSpec, nets: readonly PlacedNetwork[], json: string | undefined): string[] {
  if (json === undefined) return [`table inet ${EGRESS_TABLE} missing`];
  const { chains, rules } = tableModel(spec, nets);
  const out: string[] = [];
  const have = objects(json, "chain");
  const haveNames = have.map((c) => String(c.name)).sort();
  const wantNames = chains.map((c) => c.name).sort();
  if (haveNames.join(",") !== wantNames.join(",")) out.push(`chains differ: have [${haveNames.join(", ")}], want [${wantNames.join(", ")}]`);
  const haveRules = objects(json, "rule");
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
      const missing = w.literals.filter((l) => !values.has(l));
      if (missing.length > 0) out.push(`chain ${c.name}: rule "${w.comment}" lacks ${missing.join(", ")}`);
    });
  }
  return out;
}

// ---- routing and the plan ----

export interface RuleSpec {
  pref: number;
  iif?: string;
  fwmark?: number;
  table: number;
}

export interface RouteSpec {
  table: number;
  dst: string;
  dev: string;
}

export type EgressAction =
  | { kind: "sysctl"; key: string; value: string }
  | { kind: "route-add"; route: RouteSpec }
  | { kind: "rule-add"; rule: RuleSpec }
  | { kind: "nft"; script: string; drift: string[] }
  | { kind: "rule-del"; rule: RuleSpec }
  | { kind: "route-del"; route: RouteSpec };

export function desiredRouting(nets: readonly PlacedNetwork[]): { rules: RuleSpec[]; routes: RouteSpec[] } {
  return {
    rules: nets.flatMap((n) => [
      { pref: RULE_PREF, iif: n.bridge, table: tableOf(n.slot) },
      { pref: RULE_PREF, fwmark: markOf(n.slot), table: tableOf(n.slot) },
    ]),
    routes: nets.map((n) => ({ table: tableOf(n.slot), dst: n.cidr, dev: n.bridge })),
  };
}

const ruleKey = (r: RuleSpec): string => `${r.pref} ${r.iif ?? "-"} ${r.fwmark ?? "-"} ${r.table}`;
const routeKey = (r: RouteSpec): string => `${r.table} ${r.dst} ${r.dev}`;

/** Items of `a` not matched one-for-one by an item of `b`. */
function minus<T>(a: readonly T[], b: readonly T[], key: (x: T) => string): T[] {
  const left = new Map<string, number>();
  for (const x of b) left.set(key(x), (left.get(key(x)) ?? 0) + 1);
  return a.filter((x) => {
    const n = left.get(key(x)) ?? 0;
    if (n === 0) return true;
    left.set(key(x), n - 1);
    return false;
  });
}

/**
 * The actions that make the host match the spec, in a safe order: sysctls, routes and rules
 * of new networks first, then the nft table (one atomic replacement, only when it drifted),
 * then rules and routes no network wants. Empty when the host already matches.
 */
export function planEgress(spec: EgressSpec, observed: EgressObserved): EgressAction[] {
  const nets = placeNetworks(spec, observed.rules, observed.routes);
  const want = desiredRouting(nets);
  const actions: EgressAction[] = [];
  for (const [key, value] of Object.entries(EGRESS_SYSCTLS)) {
    if (observed.sysctls[key] !== value) actions.push({ kind: "sysctl", key, value });
  }
  for (const route of minus(want.routes, observed.routes, routeKey)) actions.push({ kind: "route-add", route });
  for (const rule of minus(want.rules, observed.rules, ruleKey)) actions.push({ kind: "rule-add", rule });
  const drift = egressDrift(spec, nets, observed.nft);
  if (drift.length > 0) actions.push({ kind: "nft", script: renderEgress(spec, nets), drift });
  for (const rule of minus(observed.rules, want.rules, ruleKey)) actions.push({ kind: "rule-del", rule });
  for (const route of minus(observed.routes, want.routes, routeKey)) actions.push({ kind: "route-del", route });
  return actions;
}

const ruleArgs = (r: RuleSpec): string[] => [
  "pref",
  String(r.pref),
  ...(r.iif !== undefined ? ["iif", r.iif] : []),
  ...(r.fwmark !== undefined ? ["fwmark", hex(r.fwmark)] : []),
  "lookup",
  String(r.table),
];

/** The command of one action (`input` goes to its stdin). */
export function egressCommand(a: EgressAction): { argv: string[]; input?: string } {
  switch (a.kind) {
    case "sysctl":
      return { argv: ["sysctl", "-qw", `${a.key}=${a.value}`] };
    case "route-add":
      return { argv: ["ip", "route", "replace", a.route.dst, "dev", a.route.dev, "table", String(a.route.table)] };
    case "route-del":
      return { argv: ["ip", "route", "del", a.route.dst, "dev", a.route.dev, "table", String(a.route.table)] };
    case "rule-add":
      return { argv: ["ip", "rule", "add", ...ruleArgs(a.rule)] };
    case "rule-del":
      return { argv: ["ip", "rule", "del", ...ruleArgs(a.rule)] };
    case "nft":
      return { argv: ["nft", "-f", "-"], input: a.script };
  }
}

export function describeEgressAction(a: EgressAction): string {
  switch (a.kind) {
    case "sysctl":
      return `set ${a.key}=${a.value}`;
    case "route-add":
    case "route-del":
      return `${a.kind === "route-add" ? "add" : "remove"} route ${a.route.dst} dev ${a.route.dev} table ${a.route.table}`;
    case "rule-add":
    case "rule-del":
      return `${a.kind === "rule-add" ? "add" : "remove"} ip rule ${ruleArgs(a.rule).join(" ")}`;
    case "nft":
      return `replace table inet ${EGRESS_TABLE} (${a.drift.join("; ")})`;
  }
}

// ---- parsing what the host has ----

const num = (v: unknown): number | undefined => {
  if (typeof v === "number") return v;
  if (typeof v === "string" && /^(0x[0-9a-f]+|\d+)$/i.test(v)) return Number(v);
  return undefined;
};

/** Our rules from `ip -j rule show` (those that look up one of our tables). */
export function parseEgressRules(json: string): ObservedRule[] {
  const list = JSON.parse(json || "[]") as Record<string, unknown>[];
  return list.flatMap((r) => {
    const table = num(r.table);
    if (table === undefined || slotOfTable(table) === undefined) return [];
    const out: ObservedRule = { pref: Number(r.priority), table };
    if (typeof r.iif === "string") out.iif = r.iif;
    const mark = num(r.fwmark);
    if (mark !== undefined) out.fwmark = mark;
    return [out];
  });
}

/** Routes in our tables from `ip -j route show table all`. */
export function parseEgressRoutes(json: string): ObservedRoute[] {
  const list = JSON.parse(json || "[]") as Record<string, unknown>[];
  return list.flatMap((r) => {
    const table = num(r.table);
    if (table === undefined || slotOfTable(table) === undefined) return [];
    return [{ table, dst: String(r.dst), dev: String(r.dev ?? "") }];
  });
}
