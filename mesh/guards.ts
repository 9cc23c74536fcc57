// Anti-spoofing guards on VM ports, pure: the nftables ruleset (bridge family, table
// noid_guard), its drift check against `nft -j list table`, and counter parsing.
// Every drop has a named counter per VM and kind, read back as security events.
import ipaddr from "ipaddr.js";
import { invalid } from "../common/errors.js";
import { nftCounters, nftObjects } from "../common/nft-json.js";

export const GUARD_TABLE = "noid_guard";
export const GUARD_CHAIN = "vmports";

export interface GuardVm {
  vmId: string;
  /** The VM's port on the host bridge (TAP or veth). */
  port: string;
  mac: string;
  ip: string;
  /**
   * Which VMs of its network this VM may reach: destinations inside `cidr` other than
   * `allowed` (the gateway and the VM's permitted peers) are dropped, for IPv4 and for ARP.
   * Isolated VMs get only the gateway; network groups get only their group's members.
   * Absent: no restriction inside the network.
   */
  peers?: { cidr: string; allowed: string[] };
}

export interface GuardSpec {
  vms: GuardVm[];
  /**
   * VXLAN ports and their network's gateway: ARP for the gateway is answered by each host
   * itself, so such ARP crossing hosts is dropped (the gateway exists on every host).
   */
  uplinks?: { port: string; gateway: string }[];
}

export const GUARD_KINDS = ["mac", "arpmac", "arpip", "dhcp", "ip", "ra", "ip6", "ethertype", "peer", "arppeer"] as const;
export type GuardKind = (typeof GUARD_KINDS)[number];

export interface GuardCounter {
  vm: string;
  kind: GuardKind;
  packets: number;
  bytes: number;
}

const PORT_RE = /^[A-Za-z0-9_.-]{1,15}$/;
const VM_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function checkVm(v: GuardVm): void {
  if (!VM_RE.test(v.vmId)) throw invalid("vmId", `"${v.vmId}" cannot name a guard`);
  if (!PORT_RE.test(v.port)) throw invalid("port", `"${v.port}" is not an interface name`);
  if (!MAC_RE.test(v.mac)) throw invalid("mac", `"${v.mac}" is not a lower-case MAC`);
  if (!ipaddr.IPv4.isValidFourPartDecimal(v.ip)) throw invalid("ip", `"${v.ip}" is not an IPv4 address`);
  if (v.peers) {
    try {
      ipaddr.IPv4.parseCIDR(v.peers.cidr);
    } catch {
      throw invalid("peers.cidr", `"${v.peers.cidr}" is not an IPv4 CIDR`);
    }
    if (v.peers.allowed.length === 0) throw invalid("peers.allowed", "must hold at least the gateway");
    for (const a of v.peers.allowed) {
      if (!ipaddr.IPv4.isValidFourPartDecimal(a)) throw invalid("peers.allowed", `"${a}" is not an IPv4 address`);
    }
  }
}

/** nft identifiers: letters, digits, underscore. The kind comes first, so names start with a letter. */
export const counterName = (vmId: string, kind: GuardKind): string => `${kind}_${vmId.replace(/[^A-Za-z0-9]/g, "_")}`;

interface Rule {
  /** Identifies the rule in the drift check (kept by nft as the rule's comment). */
  comment: string;
  text: string;
  counter?: string;
  /** Literals that must appear in the rule as nft reads it back. */
  literals: string[];
}

function rules(spec: GuardSpec): Rule[] {
  const out: Rule[] = [];
  const names = new Set<string>();
  for (const v of spec.vms) {
    checkVm(v);
    const i = `iifname "${v.port}"`;
    const lit = [v.port];
    const drop = (kind: GuardKind, match: string, extra: string[] = []): void => {
      const c = counterName(v.vmId, kind);
      if (names.has(c)) throw invalid("vmId", `two VMs map to guard counter ${c}`);
      names.add(c);
      out.push({ comment: `${v.vmId} ${kind}`, text: `${i}${match ? ` ${match}` : ""} counter name "${c}" drop`, counter: c, literals: [...lit, ...extra, c] });
    };
    drop("mac", `ether saddr != ${v.mac}`, [v.mac]);
    drop("arpmac", `ether type arp arp saddr ether != ${v.mac}`, [v.mac]);
    // 0.0.0.0 is an ARP probe (RFC 5227) of a VM checking its address before using it.
    drop("arpip", `ether type arp arp saddr ip != { 0.0.0.0, ${v.ip} }`, [v.ip]);
    drop("dhcp", "ether type ip udp sport 67");
    out.push({
      comment: `${v.vmId} dhcp-client`,
      text: `${i} ether type ip ip saddr 0.0.0.0 udp sport 68 udp dport 67 accept`,
      literals: [...lit],
    });
    drop("ip", `ether type ip ip saddr != ${v.ip}`, [v.ip]);
    drop("ra", "ether type ip6 icmpv6 type nd-router-advert");
    drop("ip6", "ether type ip6");
    if (v.peers) {
      // Network isolation and groups: enforced where the sender's frames enter the bridge, so
      // it holds for peers on this host and (through VXLAN) on every other host alike.
      const allowed = [...new Set(v.peers.allowed)].sort();
      const set = `{ ${allowed.join(", ")} }`;
      // nft stores the network address: normalise so that reading it back shows no drift.
      const net = ipaddr.IPv4.networkAddressFromCIDR(v.peers.cidr).toString();
      const cidr = `${net}/${v.peers.cidr.split("/")[1]}`;
      drop("peer", `ether type ip ip daddr ${cidr} ip daddr != ${set}`, [net, ...allowed]);
      drop("arppeer", `ether type arp arp daddr ip ${cidr} arp daddr ip != ${set}`, [net, ...allowed]);
    }
    out.push({ comment: `${v.vmId} allow`, text: `${i} ether type { ip, arp } accept`, literals: [...lit] });
    drop("ethertype", ""); // anything else: VLAN tags, PPPoE, LLDP, ...
  }
  for (const u of spec.uplinks ?? []) {
    if (!PORT_RE.test(u.port)) throw invalid("port", `"${u.port}" is not an interface name`);
    if (!ipaddr.IPv4.isValidFourPartDecimal(u.gateway)) throw invalid("gateway", `"${u.gateway}" is not an IPv4 address`);
    for (const dir of ["saddr", "daddr"] as const) {
      out.push({
        comment: `${u.port} gateway-arp-${dir}`,
        text: `iifname "${u.port}" ether type arp arp ${dir} ip ${u.gateway} drop`,
        literals: [u.port, u.gateway],
      });
    }
  }
  return out;
}

/**
 * The whole table as an `nft -f` script that replaces only our table, atomically (one
 * transaction). `counts` carries current counter values over the replacement.
 */
export function renderGuards(spec: GuardSpec, counts: ReadonlyMap<string, { packets: number; bytes: number }> = new Map()): string {
  const rs = rules(spec);
  const counters = rs.flatMap((r) => (r.counter ? [r.counter] : []));
  const lines = [
    `table bridge ${GUARD_TABLE}`,
    `delete table bridge ${GUARD_TABLE}`,
    `table bridge ${GUARD_TABLE} {`,
    ...counters.map((c) => {
      const n = counts.get(c);
      return `  counter ${c} {${n ? ` packets ${n.packets} bytes ${n.bytes}` : ""} }`;
    }),
    `  chain ${GUARD_CHAIN} {`,
    "    type filter hook prerouting priority -200; policy accept;",
    ...rs.map((r) => `    ${r.text} comment "${r.comment}"`),
    "  }",
    "}",
  ];
  return `${lines.join("\n")}\n`;
}


/** Differences between the table nft holds and the spec; empty = no drift. `json` undefined = no table. */
export function guardDrift(spec: GuardSpec, json: string | undefined): string[] {
  if (json === undefined) return [`table bridge ${GUARD_TABLE} missing`];
  const want = rules(spec);
  const out: string[] = [];
  const chain = nftObjects(json, "chain").find((c) => c.name === GUARD_CHAIN);
  if (!chain) return [`chain ${GUARD_CHAIN} missing`];
  if (chain.hook !== "prerouting" || chain.prio !== -200 || chain.policy !== "accept" || chain.type !== "filter") {
    out.push(`chain ${GUARD_CHAIN} has other hook, priority, type or policy`);
  }
  const have = nftObjects(json, "rule").filter((r) => r.chain === GUARD_CHAIN);
  const haveComments = have.map((r) => String(r.comment ?? ""));
  const wantComments = want.map((r) => r.comment);
  if (haveComments.join("\n") !== wantComments.join("\n")) {
    out.push(`rules differ: have [${haveComments.join(", ")}], want [${wantComments.join(", ")}]`);
  } else {
    want.forEach((w, i) => {
      const expr = JSON.stringify(have[i]?.expr ?? []);
      const missing = w.literals.filter((l) => !expr.includes(JSON.stringify(l).slice(1, -1)));
      if (missing.length > 0) out.push(`rule "${w.comment}" lacks ${missing.join(", ")}`);
    });
  }
  const haveCounters = new Set(nftObjects(json, "counter").map((c) => String(c.name)));
  for (const c of want.flatMap((r) => (r.counter ? [r.counter] : []))) if (!haveCounters.has(c)) out.push(`counter ${c} missing`);
  return out;
}

/** Counter values by counter name, from `nft -j list table bridge noid_guard`. */
export function counterValues(json: string): Map<string, { packets: number; bytes: number }> {
  return nftCounters(json);
}

/** Per VM and kind, the packets dropped so far (VMs in `spec` only; kinds in GUARD_KINDS order, peer kinds only with a peer policy). */
export function guardCounters(spec: GuardSpec, json: string): GuardCounter[] {
  const values = counterValues(json);
  return spec.vms.flatMap((v) =>
    GUARD_KINDS.filter((k) => v.peers !== undefined || (k !== "peer" && k !== "arppeer")).map((kind) => {
      const n = values.get(counterName(v.vmId, kind)) ?? { packets: 0, bytes: 0 };
      return { vm: v.vmId, kind, packets: n.packets, bytes: n.bytes };
    }),
  );
}
