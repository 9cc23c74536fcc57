// Tenant networks on one host: per network a bridge (vmnet<vni>, with the distributed
// gateway address) and a VXLAN device (vx<vni>) attached to it, whose FDB holds a flood
// entry per remote host that has VMs in the network and one entry per remote VM MAC.
// Pure: observed devices + FDB in, actions out.
import { NoidError } from "../common/errors.js";
import type { MeshAction } from "./actions.js";
import { type ObservedLink, planLinkSettings } from "./links.js";
import { isMeshBridge, isMeshVxlan } from "./names.js";
import type { FdbEntrySpec, NetworkSpec } from "./topology.js";

/** Remote entries of a VXLAN device: those with a `dst` (the bridge's own entries have none). */
export function parseFdb(json: string): FdbEntrySpec[] {
  let raw: { mac: string; dst?: string }[];
  try {
    raw = JSON.parse(json === "" ? "[]" : json) as { mac: string; dst?: string }[];
  } catch (e) {
    throw new NoidError("INTERNAL", "bridge -j fdb show: unparsable output", { cause: e });
  }
  return raw.filter((e) => e.dst !== undefined).map((e) => ({ mac: e.mac.toLowerCase(), dst: e.dst! }));
}

export const fdbKey = (e: FdbEntrySpec): string => `${e.mac} ${e.dst}`;

/** FDB changes of one device. A MAC that moved is replaced in place (no gap); flood entries are a set. */
export function planFdb(dev: string, want: readonly FdbEntrySpec[], have: readonly FdbEntrySpec[]): MeshAction[] {
  const haveKeys = new Set(have.map(fdbKey));
  const wantKeys = new Set(want.map(fdbKey));
  const wantMacs = new Set(want.map((e) => e.mac));
  const out: MeshAction[] = [];
  for (const e of have) {
    if (wantKeys.has(fdbKey(e))) continue;
    // A unicast MAC still wanted elsewhere is moved by the replace below, not deleted first.
    if (e.mac !== "00:00:00:00:00:00" && wantMacs.has(e.mac)) continue;
    out.push({ kind: "fdb-del", dev, mac: e.mac, dst: e.dst });
  }
  for (const e of want) if (!haveKeys.has(fdbKey(e))) out.push({ kind: "fdb-add", dev, mac: e.mac, dst: e.dst });
  return out;
}

function vxlanMatches(n: NetworkSpec, l: ObservedLink): boolean {
  return (
    l.kind === "vxlan" && l.vxlan !== undefined && l.vxlan.id === n.vxlan.vni && l.vxlan.local === n.vxlan.local &&
    l.vxlan.port === n.vxlan.port && !l.vxlan.learning
  );
}

/**
 * Devices and FDB of every wanted network, and removal of mesh devices (by name) of networks
 * no longer wanted. `fdb` holds the observed entries per existing VXLAN device.
 */
export function planNetworks(
  networks: readonly NetworkSpec[],
  links: readonly ObservedLink[],
  fdb: Readonly<Record<string, FdbEntrySpec[]>>,
): MeshAction[] {
  const byName = new Map(links.map((l) => [l.name, l]));
  const out: MeshAction[] = [];
  const wanted = new Set(networks.flatMap((n) => [n.vxlan.name, n.bridge.name]));
  // VXLAN devices first, so a bridge is never deleted with a stale port still on it.
  for (const l of links) if (isMeshVxlan(l.name) && !wanted.has(l.name)) out.push({ kind: "link-del", name: l.name });
  for (const l of links) if (isMeshBridge(l.name) && !wanted.has(l.name)) out.push({ kind: "link-del", name: l.name });

  for (const n of networks) {
    let br = byName.get(n.bridge.name);
    if (br && br.kind !== "bridge") {
      out.push({ kind: "link-del", name: br.name });
      br = undefined;
    }
    if (!br) {
      out.push({ kind: "link-add-bridge", name: n.bridge.name, mac: n.bridge.mac, mtu: n.bridge.mtu });
      br = { name: n.bridge.name, kind: "bridge", mtu: n.bridge.mtu, mac: n.bridge.mac, up: false, ipv4: [] };
    }
    out.push(...planLinkSettings({ name: n.bridge.name, mtu: n.bridge.mtu, mac: n.bridge.mac, ipv4: [n.bridge.address] }, br));

    let vx = byName.get(n.vxlan.name);
    if (vx && !vxlanMatches(n, vx)) {
      // VXLAN id, local address and port cannot be changed in place.
      out.push({ kind: "link-del", name: vx.name });
      vx = undefined;
    }
    const fresh = vx === undefined;
    if (!vx) {
      out.push({ kind: "link-add-vxlan", ...n.vxlan });
      vx = { name: n.vxlan.name, kind: "vxlan", mtu: n.vxlan.mtu, up: false, ipv4: [] };
    }
    out.push(...planLinkSettings({ name: n.vxlan.name, mtu: n.vxlan.mtu, master: n.bridge.name }, vx));
    out.push(...planFdb(n.vxlan.name, n.fdb, fresh ? [] : (fdb[n.vxlan.name] ?? [])));
  }
  return out;
}
