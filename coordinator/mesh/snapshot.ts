// What each host must know of the mesh, computed purely from the cluster
// state: every live host is a WireGuard peer; of the tenant networks, a host
// learns only those it carries itself, with the VMs every other host has in
// them (for VXLAN FDB entries and guards).
import type { MeshMember, MeshNetwork, MeshSnapshot } from "../../gen/noid/v1/agent.js";
import type { Host } from "../../gen/noid/v1/host.js";
import type { Network } from "../../gen/noid/v1/network.js";
import { VmDesiredState, type Vm } from "../../gen/noid/v1/vm.js";

export interface MeshInputs {
  /** Registered hosts with their liveness. */
  hosts: { host: Host; alive: boolean }[];
  vms: Vm[];
  networks: Network[];
  meshPrefixLen: number;
}

function vmsByHostAndNetwork(vms: Vm[]): Map<string, Map<string, Vm[]>> {
  const out = new Map<string, Map<string, Vm[]>>();
  for (const vm of vms) {
    const st = vm.status;
    if (!st?.hostId || !st.networkId || !st.mac) continue;
    if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) continue;
    const byNet = out.get(st.hostId) ?? new Map<string, Vm[]>();
    byNet.set(st.networkId, [...(byNet.get(st.networkId) ?? []), vm]);
    out.set(st.hostId, byNet);
  }
  return out;
}

export function meshNetwork(n: Network, vms: Vm[]): MeshNetwork {
  return {
    networkId: n.id,
    vni: n.vni,
    mode: n.mode || "wireguard",
    cidr: n.cidr,
    gateway: n.gateway,
    egressDenyAll: n.egress?.denyAll ?? false,
    egressAllow: n.egress?.allow ?? [],
    egressDeny: n.egress?.deny ?? [],
    vms: vms
      .map((vm) => ({
        vmId: vm.id,
        mac: vm.status!.mac,
        ip: vm.status!.ip,
        networkGroup: vm.spec?.networkGroup ?? "",
        isolated: vm.spec?.network === "isolated",
      }))
      .sort((a, b) => a.vmId.localeCompare(b.vmId)),
  };
}

/** The snapshot for host `self`: live hosts as members, networks limited to those `self` carries. */
export function meshSnapshotFor(self: string, inp: MeshInputs): MeshSnapshot {
  const byHost = vmsByHostAndNetwork(inp.vms);
  const networks = new Map(inp.networks.map((n) => [n.id, n]));
  const mine = new Set(byHost.get(self)?.keys() ?? []);
  const members: MeshMember[] = inp.hosts
    .filter(({ host, alive }) => (alive || host.id === self) && host.meshIp !== "")
    .map(({ host }) => ({
      hostId: host.id,
      name: host.name,
      address: host.address,
      wireguardPublicKey: host.wireguardPublicKey,
      wireguardPort: host.wireguardPort,
      meshIp: host.meshIp,
      networks: [...(byHost.get(host.id)?.entries() ?? [])]
        .filter(([netId]) => mine.has(netId) && networks.has(netId))
        .map(([netId, vms]) => meshNetwork(networks.get(netId)!, vms))
        .sort((a, b) => a.vni - b.vni),
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
  return { members, meshPrefixLen: inp.meshPrefixLen };
}
