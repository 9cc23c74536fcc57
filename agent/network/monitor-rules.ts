// Network behaviour monitoring, pure: the nftables table `bridge noid_monitor` that watches
// what each VM port sends and receives, its drift check, and the parsing of what the agent
// reads back (counters and dynamic sets). Nothing here drops: the guards (mesh/guards.ts,
// table `noid_guard`, prerouting priority -200) decide; this table only counts and records,
// in its own table so neither table's replacement touches the other.
//
//   chain sent      prerouting  priority -300 (before the guards: dropped frames are seen too)
//     iifname <port> jump from_<vm>
//   chain received  postrouting priority 300 (frames a bridge port sends to the VM, forwarded
//                   or from the host's stack)
//     oifname <port> jump to_<vm>
//
// Per VM (`from_<vm>`):
//   - ARP with a sender IP other than its own (0.0.0.0 probes aside) or its own IP with another
//     sender MAC: counter arp_<vm>, the forged (ip . mac) pairs into set arpsrc_<vm>.
//   - DHCP replies (udp 67 -> 68, BOOTP op 2 = offer/ack/nak): counter dhcp_<vm>, the client
//     MACs into set dhcpto_<vm>.
//   - connection attempts (TCP SYN without ACK, UDP): (daddr . dport) into dst_<vm>, daddr into
//     hosts_<vm>; ICMP echo requests: daddr into hosts_<vm>. Elements expire `windowSeconds`
//     after the VM last touched them (`update` refreshes), so a set's size is "distinct
//     targets in the last window": the agent compares it with its thresholds (monitor-detect.ts).
//   - TCP SYN-ACKs (the VM accepting a connection) from a source port it did not declare:
//     counter lsn_<vm>, (sport . peer) into lsn_<vm>.
//   - every frame, by destination: inside the network's CIDR (or broadcast/multicast) is
//     "private", anything else is "egress"; counters per VM and per network (vni).
// And `to_<vm>` classifies what the VM receives by source the same way.
import { createHash } from "node:crypto";
import ipaddr from "ipaddr.js";
import { invalid } from "../../common/errors.js";
import { nftCounters, nftObjects } from "../../common/nft-json.js";
import type { MeshView } from "./view.js";

export { LISTEN_LABEL, declaredListen } from "../../common/listen-label.js";

export const MONITOR_TABLE = "noid_monitor";
export const SENT_CHAIN = "sent";
export const RECEIVED_CHAIN = "received";
/** Before the guards (-200) in prerouting; last in postrouting. */
export const SENT_PRIORITY = -300;
export const RECEIVED_PRIORITY = 300;

export interface MonitorVm {
  vmId: string;
  /** The VM's port on the host bridge (TAP or veth). */
  port: string;
  mac: string;
  ip: string;
  networkId: string;
  vni: number;
  /** The network's CIDR: destinations inside are private, the rest egress. */
  cidr: string;
  /** TCP ports the VM may accept connections on; "any" turns listener detection off for it. */
  listen: number[] | "any";
}

export interface MonitorSpec {
  vms: MonitorVm[];
  /** How long a target stays in a VM's scan sets after the VM last touched it. */
  windowSeconds: number;
  /** Max elements of each scan set (a full set stops growing; detection still fires). */
  setSize: number;
}

export const SCOPES = ["private", "egress"] as const;
export type Scope = (typeof SCOPES)[number];

const PORT_RE = /^[A-Za-z0-9_.-]{1,15}$/;
const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
// Destinations that stay on the tenant's segment whatever the CIDR: broadcast and multicast.
const LOCAL_EXTRA = ["224.0.0.0/4", "255.255.255.255"];

const safe = (id: string): string => id.replace(/[^A-Za-z0-9]/g, "_");

/** nft object names of one VM (kind first so names start with a letter). */
export const vmObj = (kind: string, vmId: string): string => `${kind}_${safe(vmId)}`;
/** nft counter of a network (by VNI) for a scope and direction. */
export const netCounter = (vni: number, scope: Scope, dir: "tx" | "rx"): string => `n${dir}${scope === "private" ? "p" : "e"}_${vni}`;
export const vmCounter = (vmId: string, scope: Scope, dir: "tx" | "rx"): string => vmObj(`${dir}${scope === "private" ? "p" : "e"}`, vmId);

function normCidr(cidr: string): string {
  try {
    const [, len] = ipaddr.IPv4.parseCIDR(cidr);
    return `${ipaddr.IPv4.networkAddressFromCIDR(cidr).toString()}/${len}`;
  } catch {
    throw invalid("cidr", `"${cidr}" is not an IPv4 CIDR`);
  }
}

function checkVm(v: MonitorVm): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(v.vmId)) throw invalid("vmId", `"${v.vmId}" cannot name monitor objects`);
  if (!PORT_RE.test(v.port)) throw invalid("port", `"${v.port}" is not an interface name`);
  if (!MAC_RE.test(v.mac)) throw invalid("mac", `"${v.mac}" is not a lower-case MAC`);
  if (!ipaddr.IPv4.isValidFourPartDecimal(v.ip)) throw invalid("ip", `"${v.ip}" is not an IPv4 address`);
  if (!Number.isInteger(v.vni) || v.vni < 1 || v.vni > 0xffffff) throw invalid("vni", `${v.vni} is not a VNI`);
  if (v.listen !== "any") for (const p of v.listen) if (!Number.isInteger(p) || p < 1 || p > 65535) throw invalid("listen", `${p} is not a port`);
}

interface Rendered {
  counters: string[];
  sets: { name: string; type: string; size: number }[];
  chains: { name: string; rules: { text: string; comment: string }[] }[];
  sent: { text: string; comment: string }[];
  received: { text: string; comment: string }[];
}

function build(spec: MonitorSpec): Rendered {
  if (!Number.isInteger(spec.windowSeconds) || spec.windowSeconds < 1 || spec.windowSeconds > 86_400) throw invalid("windowSeconds", `${spec.windowSeconds} is not 1..86400`);
  if (!Number.isInteger(spec.setSize) || spec.setSize < 16 || spec.setSize > 1 << 20) throw invalid("setSize", `${spec.setSize} is not 16..1048576`);
  const out: Rendered = { counters: [], sets: [], chains: [], sent: [], received: [] };
  const seen = new Set<string>();
  const nets = new Set<number>();
  for (const v of [...spec.vms].sort((a, b) => a.vmId.localeCompare(b.vmId))) {
    checkVm(v);
    const from = vmObj("from", v.vmId);
    if (seen.has(from)) throw invalid("vmId", `two VMs map to monitor chain ${from}`);
    seen.add(from);
    const to = vmObj("to", v.vmId);
    const arp = vmObj("arp", v.vmId);
    const dhcp = vmObj("dhcp", v.vmId);
    const lsn = vmObj("lsn", v.vmId);
    const sets = {
      arpsrc: vmObj("arpsrc", v.vmId),
      dhcpto: vmObj("dhcpto", v.vmId),
      dst: vmObj("dst", v.vmId),
      hosts: vmObj("hosts", v.vmId),
      lsn: vmObj("lsnpeer", v.vmId),
    };
    out.counters.push(arp, dhcp, lsn);
    for (const s of SCOPES) for (const d of ["tx", "rx"] as const) out.counters.push(vmCounter(v.vmId, s, d));
    if (!nets.has(v.vni)) {
      nets.add(v.vni);
      for (const s of SCOPES) for (const d of ["tx", "rx"] as const) out.counters.push(netCounter(v.vni, s, d));
    }
    const small = Math.min(spec.setSize, 1024);
    out.sets.push(
      { name: sets.arpsrc, type: "ipv4_addr . ether_addr", size: small },
      { name: sets.dhcpto, type: "ether_addr", size: small },
      { name: sets.dst, type: "ipv4_addr . inet_service", size: spec.setSize },
      { name: sets.hosts, type: "ipv4_addr", size: spec.setSize },
      { name: sets.lsn, type: "inet_service . ipv4_addr", size: small },
    );
    const local = `{ ${[normCidr(v.cidr), ...LOCAL_EXTRA].join(", ")} }`;
    const own = `{ 0.0.0.0, ${v.ip} }`;
    const rules: { text: string; comment: string }[] = [
      { comment: "arp-ip", text: `ether type arp arp saddr ip != ${own} update @${sets.arpsrc} { arp saddr ip . arp saddr ether } counter name "${arp}"` },
      { comment: "arp-mac", text: `ether type arp arp saddr ip ${own} arp saddr ether != ${v.mac} update @${sets.arpsrc} { arp saddr ip . arp saddr ether } counter name "${arp}"` },
      // BOOTP op (first byte after the 8-byte UDP header) 2 = BOOTREPLY: an offer, ack or nak.
      { comment: "dhcp-server", text: `ether type ip udp sport 67 udp dport 68 @th,64,8 2 update @${sets.dhcpto} { ether daddr } counter name "${dhcp}"` },
      { comment: "tcp-connect", text: `ether type ip tcp flags & (syn | ack) == syn update @${sets.dst} { ip daddr . tcp dport } update @${sets.hosts} { ip daddr }` },
      { comment: "udp-connect", text: `ether type ip meta l4proto udp update @${sets.dst} { ip daddr . udp dport } update @${sets.hosts} { ip daddr }` },
      { comment: "icmp-echo", text: `ether type ip icmp type echo-request update @${sets.hosts} { ip daddr }` },
    ];
    if (v.listen !== "any") {
      const ports = [...new Set(v.listen)].sort((a, b) => a - b);
      const unless = ports.length ? ` tcp sport != { ${ports.join(", ")} }` : "";
      rules.push({
        comment: "listener",
        text: `ether type ip tcp flags & (syn | ack) == syn | ack${unless} update @${sets.lsn} { tcp sport . ip daddr } counter name "${lsn}"`,
      });
    }
    rules.push(
      { comment: "tx-egress", text: `ether type ip ip daddr != ${local} counter name "${vmCounter(v.vmId, "egress", "tx")}" counter name "${netCounter(v.vni, "egress", "tx")}" return` },
      { comment: "tx-private", text: `counter name "${vmCounter(v.vmId, "private", "tx")}" counter name "${netCounter(v.vni, "private", "tx")}"` },
    );
    out.chains.push({ name: from, rules });
    out.chains.push({
      name: to,
      rules: [
        { comment: "rx-egress", text: `ether type ip ip saddr != ${local} counter name "${vmCounter(v.vmId, "egress", "rx")}" counter name "${netCounter(v.vni, "egress", "rx")}" return` },
        { comment: "rx-private", text: `counter name "${vmCounter(v.vmId, "private", "rx")}" counter name "${netCounter(v.vni, "private", "rx")}"` },
      ],
    });
    out.sent.push({ comment: v.vmId, text: `iifname "${v.port}" jump ${from}` });
    out.received.push({ comment: v.vmId, text: `oifname "${v.port}" jump ${to}` });
  }
  return out;
}

/**
 * A digest of everything the table is built from, kept as the name of an (unused) counter
 * `spec_<digest>` that the drift check looks for (`nft -j` does not show table comments).
 */
export function monitorDigest(spec: MonitorSpec): string {
  const r = build(spec);
  return createHash("sha256").update(JSON.stringify({ r, w: spec.windowSeconds, s: spec.setSize })).digest("hex").slice(0, 16);
}

const specCounter = (spec: MonitorSpec): string => `spec_${monitorDigest(spec)}`;

/**
 * The whole table as an `nft -f` script that replaces only our table, atomically. `counts`
 * carries counter values over the replacement (the scan sets start empty: a new window).
 */
export function renderMonitor(spec: MonitorSpec, counts: ReadonlyMap<string, { packets: number; bytes: number }> = new Map()): string {
  const r = build(spec);
  const lines = [
    `table bridge ${MONITOR_TABLE}`,
    `delete table bridge ${MONITOR_TABLE}`,
    `table bridge ${MONITOR_TABLE} {`,
    `  comment "noid network behaviour monitor"`,
    `  counter ${specCounter(spec)} { }`,
    ...r.counters.map((c) => {
      const n = counts.get(c);
      return `  counter ${c} {${n ? ` packets ${n.packets} bytes ${n.bytes}` : ""} }`;
    }),
    ...r.sets.map((s) => `  set ${s.name} { type ${s.type}; flags dynamic,timeout; timeout ${spec.windowSeconds}s; size ${s.size}; }`),
    ...r.chains.flatMap((c) => [`  chain ${c.name} {`, ...c.rules.map((x) => `    ${x.text} comment "${x.comment}"`), "  }"]),
    `  chain ${SENT_CHAIN} {`,
    `    type filter hook prerouting priority ${SENT_PRIORITY}; policy accept;`,
    ...r.sent.map((x) => `    ${x.text} comment "${x.comment}"`),
    "  }",
    `  chain ${RECEIVED_CHAIN} {`,
    `    type filter hook postrouting priority ${RECEIVED_PRIORITY}; policy accept;`,
    ...r.received.map((x) => `    ${x.text} comment "${x.comment}"`),
    "  }",
    "}",
  ];
  return `${lines.join("\n")}\n`;
}

/**
 * Differences between the table nft holds (`nft -j list table bridge noid_monitor`) and the
 * spec; empty = none. The digest counter says which spec the table was built from;
 * rules, counters and sets are checked by name, so a deleted rule or object is drift too.
 */
export function monitorDrift(spec: MonitorSpec, json: string | undefined): string[] {
  if (json === undefined) return [`table bridge ${MONITOR_TABLE} missing`];
  const r = build(spec);
  const out: string[] = [];
  const counters = new Set(nftObjects(json, "counter").map((c) => String(c.name)));
  if (!counters.has(specCounter(spec))) out.push("table built from another spec");
  const chains = new Map(nftObjects(json, "chain").map((c) => [String(c.name), c]));
  const rules = nftObjects(json, "rule");
  const want = [
    ...r.chains.map((c) => ({ name: c.name, rules: c.rules.map((x) => x.comment) })),
    { name: SENT_CHAIN, rules: r.sent.map((x) => x.comment), hook: "prerouting", prio: SENT_PRIORITY },
    { name: RECEIVED_CHAIN, rules: r.received.map((x) => x.comment), hook: "postrouting", prio: RECEIVED_PRIORITY },
  ];
  for (const w of want) {
    const c = chains.get(w.name);
    if (!c) {
      out.push(`chain ${w.name} missing`);
      continue;
    }
    if ("hook" in w && (c.hook !== w.hook || c.prio !== w.prio || c.policy !== "accept")) out.push(`chain ${w.name} has another hook, priority or policy`);
    const have = rules.filter((x) => x.chain === w.name).map((x) => String(x.comment ?? ""));
    if (have.join("\n") !== w.rules.join("\n")) out.push(`chain ${w.name}: rules [${have.join(", ")}], want [${w.rules.join(", ")}]`);
  }
  for (const c of r.counters) if (!counters.has(c)) out.push(`counter ${c} missing`);
  const sets = new Set(nftObjects(json, "set").map((s) => String(s.name)));
  for (const s of r.sets) if (!sets.has(s.name)) out.push(`set ${s.name} missing`);
  return out;
}

/** What one VM's objects hold at one reading. */
export interface MonitorReading {
  vmId: string;
  networkId: string;
  /** Packets counted so far by the detection counters. */
  arpForged: number;
  dhcpReplies: number;
  listenerAccepts: number;
  /** Forged ARP senders seen in the window. */
  arpSenders: { ip: string; mac: string }[];
  /** Clients the VM's DHCP replies went to (MACs). */
  dhcpClients: string[];
  /** Distinct (address, port) the VM tried to reach in the window. */
  targets: { ip: string; port: number }[];
  /** Distinct addresses the VM tried to reach in the window. */
  hosts: string[];
  /** Undeclared ports the VM accepted connections on, and from whom. */
  listeners: { port: number; peer: string }[];
  traffic: Record<`${"tx" | "rx"}_${Scope}`, { packets: number; bytes: number }>;
}

export interface NetworkTrafficReading {
  networkId: string;
  scope: Scope;
  direction: "sent" | "received";
  packets: number;
  bytes: number;
}

type Val = unknown;

/** Set elements as their value lists: "1.2.3.4" -> ["1.2.3.4"], concat -> its parts. */
function elements(set: Record<string, unknown> | undefined): Val[][] {
  const elems = (set?.elem as unknown[] | undefined) ?? [];
  return elems.map((e) => {
    const v = typeof e === "object" && e !== null && "elem" in e ? (e as { elem: { val: Val } }).elem.val : e;
    return typeof v === "object" && v !== null && "concat" in v ? ((v as { concat: Val[] }).concat) : [v];
  });
}

/** Pure: the readings of every VM of `spec` from `nft -j list table bridge noid_monitor`. */
export function monitorReadings(spec: MonitorSpec, json: string): { vms: MonitorReading[]; networks: NetworkTrafficReading[] } {
  const counters = nftCounters(json);
  const sets = new Map(nftObjects(json, "set").map((s) => [String(s.name), s]));
  const c = (name: string) => counters.get(name) ?? { packets: 0, bytes: 0 };
  const vms = spec.vms.map((v): MonitorReading => ({
    vmId: v.vmId,
    networkId: v.networkId,
    arpForged: c(vmObj("arp", v.vmId)).packets,
    dhcpReplies: c(vmObj("dhcp", v.vmId)).packets,
    listenerAccepts: c(vmObj("lsn", v.vmId)).packets,
    arpSenders: elements(sets.get(vmObj("arpsrc", v.vmId))).map(([ip, mac]) => ({ ip: String(ip), mac: String(mac) })),
    dhcpClients: elements(sets.get(vmObj("dhcpto", v.vmId))).map(([mac]) => String(mac)),
    targets: elements(sets.get(vmObj("dst", v.vmId))).map(([ip, port]) => ({ ip: String(ip), port: Number(port) })),
    hosts: elements(sets.get(vmObj("hosts", v.vmId))).map(([ip]) => String(ip)),
    listeners: elements(sets.get(vmObj("lsnpeer", v.vmId))).map(([port, peer]) => ({ port: Number(port), peer: String(peer) })),
    traffic: {
      tx_private: c(vmCounter(v.vmId, "private", "tx")),
      tx_egress: c(vmCounter(v.vmId, "egress", "tx")),
      rx_private: c(vmCounter(v.vmId, "private", "rx")),
      rx_egress: c(vmCounter(v.vmId, "egress", "rx")),
    },
  }));
  const byVni = new Map<number, string>();
  for (const v of spec.vms) byVni.set(v.vni, v.networkId);
  const networks: NetworkTrafficReading[] = [];
  for (const [vni, networkId] of [...byVni].sort((a, b) => a[0] - b[0])) {
    for (const scope of SCOPES) {
      for (const [dir, direction] of [["tx", "sent"], ["rx", "received"]] as const) {
        const n = c(netCounter(vni, scope, dir));
        networks.push({ networkId, scope, direction, packets: n.packets, bytes: n.bytes });
      }
    }
  }
  return { vms, networks };
}

/**
 * Pure: the monitor spec of this host: every local VM whose port exists (`ports`: VM id ->
 * host port), with its network and declared listening ports (`listen`).
 */
export function monitorSpecOf(
  view: Pick<MeshView, "local" | "networks">,
  ports: ReadonlyMap<string, string>,
  listen: (vmId: string) => number[] | "any",
  s: { windowSeconds: number; setSize: number },
): MonitorSpec {
  const vms: MonitorVm[] = [];
  for (const a of [...view.local.values()].sort((x, y) => x.vmId.localeCompare(y.vmId))) {
    const port = ports.get(a.vmId);
    const net = view.networks.get(a.networkId);
    if (!port || !a.ip || !net) continue;
    vms.push({ vmId: a.vmId, port, mac: a.mac, ip: a.ip, networkId: a.networkId, vni: a.vni, cidr: net.cidr, listen: listen(a.vmId) });
  }
  return { vms, windowSeconds: s.windowSeconds, setSize: s.setSize };
}
