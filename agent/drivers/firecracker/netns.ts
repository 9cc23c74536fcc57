// The VM's network plumbing, decided purely. Each VM gets its own netns (the jailer joins it),
// holding the TAP Firecracker opens and a veth whose other end is the VM's port on the host,
// bridged together inside the netns:
//
//   host netns: <hostPort> ──veth── VM netns: veth0 ─┐
//                                                     br0 ── tap0 ── guest eth0
//
// The TAP name is the same in every VM's netns, so a snapshot taken in one VM restores in
// another without renaming (docs/snapshotting/network-for-clones.md), and the host side
// looks like the sandbox driver's (a veth port to plug into the tenant bridge).
import type { VmNetSpec } from "../driver.js";
import { shortId } from "../sandbox/names.js";

export const TAP = "tap0";
const VETH_IN = "veth0";
const BRIDGE = "br0";

export const vmNetnsName = (nsPrefix: string, vmId: string): string => `${nsPrefix}-fc-${shortId(vmId)}`;
/** "nf" + 10 hex = 12 characters (interface names are capped at 15). */
export const hostPortName = (vmId: string): string => `nf${shortId(vmId)}`;

export interface NetObserved {
  netnsExists: boolean;
  /** Link names present in the VM's netns. */
  vmLinks: ReadonlySet<string>;
  hostPortExists: boolean;
}

export interface NetStep {
  /** "host": the driver's host netns; "vm": the VM's netns; "root": no namespace (ip netns add). */
  where: "host" | "vm" | "root";
  argv: string[];
}

export interface NetNames {
  netns: string;
  hostPort: string;
}

/** Steps that bring the VM's network to the wanted shape from what is observed; idempotent. */
export function netPlan(names: NetNames, net: VmNetSpec, owner: { uid: number; gid: number }, o: NetObserved): NetStep[] {
  const steps: NetStep[] = [];
  const vm = (...argv: string[]): void => void steps.push({ where: "vm", argv: ["ip", ...argv] });
  const host = (...argv: string[]): void => void steps.push({ where: "host", argv: ["ip", ...argv] });
  const has = (l: string): boolean => o.netnsExists && o.vmLinks.has(l);
  if (!o.netnsExists) steps.push({ where: "root", argv: ["ip", "netns", "add", names.netns] });
  vm("link", "set", "lo", "up");
  // Owned by the uid Firecracker runs as after the jailer drops privileges, or it cannot open it.
  if (!has(TAP)) vm("tuntap", "add", "dev", TAP, "mode", "tap", "user", String(owner.uid), "group", String(owner.gid));
  if (!has(BRIDGE)) vm("link", "add", BRIDGE, "type", "bridge");
  // A half-made pair (host end present, peer missing) is removed and made again.
  if (o.hostPortExists && !has(VETH_IN)) host("link", "del", names.hostPort);
  if (!o.hostPortExists || !has(VETH_IN)) host("link", "add", names.hostPort, "type", "veth", "peer", "name", VETH_IN, "netns", names.netns);
  if (net.mtu) {
    for (const l of [TAP, VETH_IN, BRIDGE]) vm("link", "set", l, "mtu", String(net.mtu));
    host("link", "set", names.hostPort, "mtu", String(net.mtu));
  }
  vm("link", "set", TAP, "master", BRIDGE);
  vm("link", "set", VETH_IN, "master", BRIDGE);
  for (const l of [TAP, VETH_IN, BRIDGE]) vm("link", "set", l, "up");
  if (net.bridge) host("link", "set", names.hostPort, "master", net.bridge);
  host("link", "set", names.hostPort, "up");
  return steps;
}
