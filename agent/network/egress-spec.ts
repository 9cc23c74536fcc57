// Egress of tenant networks, pure: the spec, its validation, and each network's slot.
// egress-ruleset.ts renders the nftables table `inet noid_egress`, egress.ts plans the ip
// rules, routes and sysctls by diff against the host, egress-apply.ts runs the plan.
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
export const hex = (n: number): string => `0x${n.toString(16)}`;

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
  normalizeCidrs("protect", spec.protect ?? []);
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

