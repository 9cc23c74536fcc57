// The whole host's mesh diff, pure: desired (from topology.ts) + observed -> actions.
// An empty plan means the host is as the topology says; apply.ts uses that to verify.
import type { MeshAction } from "./actions.js";
import { type ObservedLink, planLinkSettings } from "./links.js";
import type { FdbEntrySpec, HostMeshDesired } from "./topology.js";
import { planNetworks } from "./vxlan.js";
import { type WgObserved, planWireguard } from "./wireguard.js";

export interface HostMeshObserved {
  wg: WgObserved;
  links: ObservedLink[];
  /** Remote FDB entries per existing mesh VXLAN device. */
  fdb: Record<string, FdbEntrySpec[]>;
}

export function planHostMesh(desired: HostMeshDesired, observed: HostMeshObserved): MeshAction[] {
  const wgLink = observed.links.find((l) => l.name === desired.wg.ifname);
  return [
    ...planWireguard(desired.wg, observed.wg),
    ...planLinkSettings({ name: desired.wg.ifname, mtu: desired.wg.mtu, ipv4: [desired.wg.address] }, wgLink),
    ...planNetworks(desired.networks, observed.links, observed.fdb),
  ];
}
