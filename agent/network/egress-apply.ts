// Thin I/O for egress: observe (nft table, our ip rules and routes, sysctls), plan (pure,
// egress.ts), run only the difference, observe again and require an empty plan.
import { NoidError, during, precondition } from "../../common/errors.js";
import type { Runner } from "../../common/run.js";
import {
  EGRESS_SYSCTLS,
  EGRESS_TABLE,
  type EgressAction,
  type EgressDrop,
  type EgressObserved,
  type EgressSpec,
  describeEgressAction,
  egressCommand,
  egressDrops,
  parseEgressRoutes,
  parseEgressRules,
  placeNetworks,
  planEgress,
} from "./egress.js";

export interface EgressHost {
  runner: Runner;
  /** The host's network namespace (lab hosts); undefined = this process's. */
  netns?: string;
}

const nsOpt = (h: EgressHost): { netns?: string } => (h.netns !== undefined ? { netns: h.netns } : {});

export async function observeEgress(h: EgressHost): Promise<EgressObserved> {
  const ns = nsOpt(h);
  const nft = await h.runner(["nft", "-j", "list", "table", "inet", EGRESS_TABLE], { ...ns, allowFail: true });
  const rules = parseEgressRules((await h.runner(["ip", "-j", "rule", "show"], ns)).stdout);
  const routes = parseEgressRoutes((await h.runner(["ip", "-j", "route", "show", "table", "all"], ns)).stdout);
  const keys = Object.keys(EGRESS_SYSCTLS);
  const values = (await h.runner(["sysctl", "-n", ...keys], ns)).stdout.split("\n").map((l) => l.trim());
  const sysctls = Object.fromEntries(keys.map((k, i) => [k, values[i] ?? ""]));
  return { nft: nft.exitCode === 0 ? nft.stdout : undefined, rules, routes, sysctls };
}

/** Interface name -> administratively up. */
async function links(h: EgressHost): Promise<Map<string, boolean>> {
  const r = await h.runner(["ip", "-j", "link", "show"], nsOpt(h));
  const list = JSON.parse(r.stdout || "[]") as { ifname: string; flags?: string[] }[];
  return new Map(list.map((l) => [l.ifname, (l.flags ?? []).includes("UP")]));
}

async function runAction(a: EgressAction, h: EgressHost): Promise<void> {
  const c = egressCommand(a);
  try {
    await h.runner(c.argv, { ...nsOpt(h), ...(c.input !== undefined ? { input: c.input } : {}) });
  } catch (e) {
    throw during(`egress: ${describeEgressAction(a)}`, e);
  }
}

/**
 * Makes the host's egress match `spec` and returns what was changed (empty: nothing, the
 * host already matched; otherwise drift or spec changes, for the log). The uplink and every
 * network's bridge (vmnet<vni>, up) must exist. Networks missing from the spec lose their rules,
 * routes and NAT; their slot (conntrack zone, mark, table) is freed. Not for concurrent use
 * on one host: the caller serializes applies.
 */
export async function applyEgress(spec: EgressSpec, h: EgressHost): Promise<EgressAction[]> {
  placeNetworks(spec, []); // bad input fails here, before anything is read or changed
  const have = await links(h);
  if (!have.has(spec.uplink)) throw precondition(`egress: uplink ${spec.uplink} does not exist`);
  for (const n of spec.networks) {
    const up = have.get(`vmnet${n.vni}`);
    if (up === undefined) throw precondition(`egress: bridge vmnet${n.vni} does not exist (create the network's bridge first)`);
    if (!up) throw precondition(`egress: bridge vmnet${n.vni} is down`);
  }
  const actions = planEgress(spec, await observeEgress(h));
  for (const a of actions) await runAction(a, h);
  const left = planEgress(spec, await observeEgress(h));
  if (left.length > 0) {
    throw new NoidError("INTERNAL", `egress still differs after apply: ${left.map(describeEgressAction).join("; ")}`);
  }
  return actions;
}

/** What differs from `spec` right now, without changing anything (drift report). */
export async function egressDiff(spec: EgressSpec, h: EgressHost): Promise<EgressAction[]> {
  return planEgress(spec, await observeEgress(h));
}

/** Packets dropped so far by egress policy and isolation (empty when the table is absent). */
export async function readEgressDrops(h: EgressHost): Promise<EgressDrop[]> {
  const r = await h.runner(["nft", "-j", "list", "table", "inet", EGRESS_TABLE], { ...nsOpt(h), allowFail: true });
  return r.exitCode === 0 ? egressDrops(r.stdout) : [];
}

/** Removes our table, rules and routes (sysctls stay: other things may need forwarding). */
export async function removeEgress(h: EgressHost): Promise<void> {
  await h.runner(["nft", "delete", "table", "inet", EGRESS_TABLE], { ...nsOpt(h), allowFail: true });
  const o = await observeEgress(h);
  for (const rule of o.rules) await runAction({ kind: "rule-del", rule }, h);
  for (const route of o.routes) await runAction({ kind: "route-del", route }, h);
}

/**
 * The uplink when the config names none: the device of the default route, else the one
 * carrying `address` (the host's underlay address).
 */
export async function detectUplink(h: EgressHost, address?: string): Promise<string> {
  const ns = nsOpt(h);
  const def = JSON.parse((await h.runner(["ip", "-j", "-4", "route", "show", "default"], ns)).stdout || "[]") as { dev?: string }[];
  if (def[0]?.dev) return def[0].dev;
  if (address) {
    const addrs = JSON.parse((await h.runner(["ip", "-j", "-4", "addr", "show"], ns)).stdout || "[]") as {
      ifname: string;
      addr_info?: { local?: string }[];
    }[];
    const found = addrs.find((l) => (l.addr_info ?? []).some((a) => a.local === address));
    if (found) return found.ifname;
  }
  throw precondition(`egress: no uplink: no default route${address ? ` and no interface holds ${address}` : ""}; set "uplink" in the agent config`);
}
