// Exposed ports on a host, pure: the nftables table `ip noid_ports` (DNAT to VMs), the plan
// that brings what nft holds to it rule by rule, and the drift it finds on the way.
//
// A sibling of `inet noid_egress` (egress-ruleset.ts), not a part of it: egress is replaced
// whole when it changes, which would disturb connections each time a port is exposed; here
// every exposure is one rule per chain, keyed by its comment ("tcp/8080", "mesh/40000"), so
// exposing or unexposing adds or deletes exactly its rules in one `nft -f` transaction.
// The egress table already forwards towards a bridge only connections with `ct status dnat`
// (its `inbound` chain), and their replies back (`exposed-replies`): deny by default, and
// only what this table DNATs passes.
//
// Overlapping tenant CIDRs (see egress-spec.ts): the DNAT target alone does not say which
// bridge, so each rule also sets the network's packet mark and ct mark (slot s): the first
// packet is routed by `ip rule fwmark M lookup M` to the right bridge; later packets get the
// mark from the ct mark (egress's `reply-mark`); the VM's replies carry it anyway. Inbound
// connections stay in conntrack zone 0 both ways: the VM's replies are looked up with the
// directional zone egress sets on the bridge (original zone s, reply zone 0) and are found
// as the reply direction of the zone-0 entry. A connection the host itself opens to its own
// mesh address (an ingress on the VM's host) is put in zone s at output, where its replies
// (to a local address: egress's `zone-host`) look for it.
//
// Public ports are DNATed only from the uplink, to the host's own addresses; mesh ports
// (the VM side of HTTP routes) only from the WireGuard interface, so an ingress reaches VMs
// over the mesh without joining tenant networks and nobody reaches mesh ports from outside.
import ipaddr from "ipaddr.js";
import { invalid } from "../../common/errors.js";
import { nftObjects } from "../../common/nft-json.js";
import { checkPort, checkProtocol } from "../../common/ports.js";
import { MAX_SLOT, hex, markOf } from "./egress-spec.js";
import { exprValues } from "./egress-ruleset.js";

export const PORTS_TABLE = "noid_ports";

/** One DNAT as the host applies it, with its VM's address and network slot resolved. */
export interface HostPort {
  protocol: "tcp" | "udp";
  hostPort: number;
  vmIp: string;
  vmPort: number;
  /** The slot of the VM's network on this host (mark and conntrack zone). */
  slot: number;
  /** From the WireGuard interface only (the VM side of an HTTP route). */
  mesh: boolean;
}

export interface PortsSpec {
  uplink: string;
  wgIfname: string;
  /** This host's mesh address: connections the host opens to it reach mesh ports too. */
  meshIp?: string;
  ports: HostPort[];
}

/** "tcp/8080", "udp/53", "mesh/40000": the name of an exposure on its host (and in reports). */
export const portKey = (p: Pick<HostPort, "protocol" | "hostPort" | "mesh">): string => `${p.mesh ? "mesh" : p.protocol}/${p.hostPort}`;

interface Chain {
  name: string;
  base: { type: string; hook: string; prio: number };
}

export const PORT_CHAINS: readonly Chain[] = [
  { name: "pre_nat", base: { type: "nat", hook: "prerouting", prio: -100 } },
  { name: "out_raw", base: { type: "filter", hook: "output", prio: -300 } },
  { name: "out_nat", base: { type: "nat", hook: "output", prio: -100 } },
];

export interface PortRule {
  chain: string;
  comment: string;
  text: string;
  /** Values that must appear in the rule as nft reads it back. */
  literals: string[];
}

const IFNAME_RE = /^[A-Za-z0-9_.-]{1,15}$/;

function check(spec: PortsSpec): void {
  if (!IFNAME_RE.test(spec.uplink)) throw invalid("uplink", `"${spec.uplink}" is not an interface name`);
  if (!IFNAME_RE.test(spec.wgIfname)) throw invalid("wgIfname", `"${spec.wgIfname}" is not an interface name`);
  if (spec.meshIp !== undefined && !ipaddr.IPv4.isValidFourPartDecimal(spec.meshIp)) throw invalid("meshIp", `"${spec.meshIp}" is not an IPv4 address`);
  const seen = new Set<string>();
  for (const p of spec.ports) {
    checkProtocol("protocol", p.protocol);
    checkPort("host_port", p.hostPort);
    checkPort("vm_port", p.vmPort);
    if (p.mesh && p.protocol !== "tcp") throw invalid("protocol", "mesh ports are tcp");
    if (!ipaddr.IPv4.isValidFourPartDecimal(p.vmIp)) throw invalid("vmIp", `"${p.vmIp}" is not an IPv4 address`);
    if (!Number.isInteger(p.slot) || p.slot < 1 || p.slot > MAX_SLOT) throw invalid("slot", `${p.slot} is not a network slot`);
    const k = portKey(p);
    if (seen.has(k)) throw invalid("ports", `${k} appears twice`);
    seen.add(k);
  }
}

/** Every rule of the table, in a stable order (by chain, then by exposure). */
export function portRules(spec: PortsSpec): PortRule[] {
  check(spec);
  const out: PortRule[] = [];
  const sorted = [...spec.ports].sort((a, b) => portKey(a).localeCompare(portKey(b)));
  for (const p of sorted) {
    const k = portKey(p);
    const m = markOf(p.slot);
    const mark = `meta mark set ${hex(m)} ct mark set ${hex(m)}`;
    const dnat = `dnat to ${p.vmIp}:${p.vmPort}`;
    const match = `${p.protocol} dport ${p.hostPort}`;
    const lits = [p.protocol, p.hostPort, m, p.vmIp, p.vmPort].map(String);
    if (p.mesh) {
      out.push({ chain: "pre_nat", comment: k, text: `iifname "${spec.wgIfname}" ${match} ${mark} ${dnat}`, literals: [spec.wgIfname, ...lits] });
      if (spec.meshIp) {
        out.push({ chain: "out_raw", comment: k, text: `ip daddr ${spec.meshIp} ${match} ct zone set ${p.slot}`, literals: [spec.meshIp, p.protocol, String(p.hostPort), String(p.slot)] });
        out.push({ chain: "out_nat", comment: k, text: `ip daddr ${spec.meshIp} ${match} ${mark} ${dnat}`, literals: [spec.meshIp, ...lits] });
      }
    } else {
      out.push({ chain: "pre_nat", comment: k, text: `iifname "${spec.uplink}" fib daddr type local ${match} ${mark} ${dnat}`, literals: [spec.uplink, "local", ...lits] });
    }
  }
  return out;
}

/** The whole table as one `nft -f` transaction that replaces only our table. */
export function renderPorts(spec: PortsSpec): string {
  const rules = portRules(spec);
  const lines = [`table ip ${PORTS_TABLE}`, `delete table ip ${PORTS_TABLE}`, `table ip ${PORTS_TABLE} {`];
  for (const c of PORT_CHAINS) {
    lines.push(`  chain ${c.name} {`, `    type ${c.base.type} hook ${c.base.hook} priority ${c.base.prio}; policy accept;`);
    for (const r of rules.filter((x) => x.chain === c.name)) lines.push(`    ${r.text} comment "${r.comment}"`);
    lines.push("  }");
  }
  lines.push("}");
  return `${lines.join("\n")}\n`;
}

export type PortsAction =
  | { kind: "replace"; script: string; why: string }
  | { kind: "delete"; chain: string; handle: number; comment: string; why: string }
  | { kind: "add"; rule: PortRule };

/**
 * What makes the table as nft holds it (`json`: `nft -j list table ip noid_ports`, undefined
 * when absent) match the spec: the whole table when it is missing or its chains are wrong,
 * else rule deletions (unwanted, duplicated or altered rules) and additions. Empty: it matches.
 */
export function planPorts(spec: PortsSpec, json: string | undefined): PortsAction[] {
  const want = portRules(spec);
  if (json === undefined) return [{ kind: "replace", script: renderPorts(spec), why: `table ip ${PORTS_TABLE} missing` }];
  const chains = nftObjects(json, "chain");
  for (const c of PORT_CHAINS) {
    const h = chains.find((x) => x.name === c.name);
    if (!h || h.hook !== c.base.hook || h.prio !== c.base.prio || h.type !== c.base.type || h.policy !== "accept") {
      return [{ kind: "replace", script: renderPorts(spec), why: `chain ${c.name} missing or changed` }];
    }
  }
  if (chains.length !== PORT_CHAINS.length) return [{ kind: "replace", script: renderPorts(spec), why: "unknown chains in the table" }];
  const actions: PortsAction[] = [];
  const have = nftObjects(json, "rule");
  for (const c of PORT_CHAINS) {
    const wanted = new Map(want.filter((r) => r.chain === c.name).map((r) => [r.comment, r]));
    const kept = new Set<string>();
    for (const r of have.filter((x) => x.chain === c.name)) {
      const comment = String(r.comment ?? "");
      const w = wanted.get(comment);
      let why: string | undefined;
      if (!w) why = "not exposed";
      else if (kept.has(comment)) why = "duplicate";
      else {
        const values = exprValues(r.expr ?? []);
        const missing = w.literals.filter((l) => !values.has(l));
        if (missing.length > 0) why = `altered (lacks ${missing.join(", ")})`;
      }
      if (why) actions.push({ kind: "delete", chain: c.name, handle: Number(r.handle), comment, why });
      else kept.add(comment);
    }
    for (const w of wanted.values()) if (!kept.has(w.comment)) actions.push({ kind: "add", rule: w });
  }
  return actions;
}

/** One `nft -f` transaction for the actions (a replacement is the whole script). */
export function portsScript(actions: readonly PortsAction[]): string {
  const replace = actions.find((a) => a.kind === "replace");
  if (replace) return replace.script;
  return actions
    .map((a) => {
      if (a.kind === "delete") return `delete rule ip ${PORTS_TABLE} ${a.chain} handle ${a.handle}`;
      if (a.kind === "add") return `add rule ip ${PORTS_TABLE} ${a.rule.chain} ${a.rule.text} comment "${a.rule.comment}"`;
      return "";
    })
    .join("\n")
    .concat("\n");
}

export function describePortsAction(a: PortsAction): string {
  switch (a.kind) {
    case "replace":
      return `replace table ip ${PORTS_TABLE} (${a.why})`;
    case "delete":
      return `delete ${a.chain} rule "${a.comment}" (${a.why})`;
    case "add":
      return `add ${a.rule.chain} rule "${a.rule.comment}"`;
  }
}

/** The exposures fully present in nft (every rule of each in place), for the report. */
export function appliedPorts(spec: PortsSpec, json: string | undefined): string[] {
  if (json === undefined) return [];
  const left = planPorts(spec, json);
  if (left.some((a) => a.kind === "replace")) return [];
  const broken = new Set(left.flatMap((a) => (a.kind === "add" ? [a.rule.comment] : a.kind === "delete" ? [a.comment] : [])));
  return [...new Set(portRules(spec).map((r) => r.comment))].filter((k) => !broken.has(k)).sort();
}
