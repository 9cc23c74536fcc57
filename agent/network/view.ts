// The agent's reading of a MeshSnapshot, pure: the coordinator's proto view -> the mesh
// library's topology input (hostMesh), each local VM's attachment (bridge, MTU, gateway)
// and the guard spec of this host's VM ports, including who may reach whom (isolation and
// network groups). No I/O: controller.ts applies what these functions compute.
import ipaddr from "ipaddr.js";
import { invalid } from "../../common/errors.js";
import type { MeshNetwork as ProtoMeshNetwork, MeshSnapshot } from "../../gen/noid/v1/agent.js";
import type { GuardSpec, GuardVm } from "../../mesh/guards.js";
import { vxlanName } from "../../mesh/names.js";
import { type HostMeshDesired, type MeshMember, type Transport, hostMesh } from "../../mesh/topology.js";

export interface MeshSettings {
  /** The WireGuard interface of this host (unique per machine when lab hosts share one). */
  wgIfname: string;
  uplinkMtu: number;
}

/** What a VM's port needs to join its network on this host. */
export interface VmAttachment {
  vmId: string;
  networkId: string;
  vni: number;
  bridge: string;
  /** The network's MTU on this host (uplink minus WireGuard and VXLAN overhead). */
  mtu: number;
  gateway: string;
  prefixLen: number;
  mac: string;
  ip: string;
}

/** One VM of a network anywhere in the mesh, with what decides who it may reach. */
interface PolicyVm {
  vmId: string;
  ip: string;
  group: string;
  isolated: boolean;
}

export interface MeshView {
  selfId: string;
  members: MeshMember[];
  /** This host's networks as the coordinator sent them (with their egress policy). */
  selfNetworks: ProtoMeshNetwork[];
  meshCidr: string;
  desired: HostMeshDesired;
  /** This host's VMs by id. */
  local: Map<string, VmAttachment>;
  /** Every VM (all hosts) of each network this host carries, by network id. */
  networkVms: Map<string, PolicyVm[]>;
  /** Network id -> CIDR and gateway. */
  networks: Map<string, { cidr: string; gateway: string; vni: number }>;
}

const bareIp = (ip: string): string => ip.split("/")[0] ?? "";

/** The mesh CIDR from one member's mesh IP and the prefix length: "100.64.0.3", 16 -> "100.64.0.0/16". */
export function meshCidrOf(meshIp: string, prefixLen: number): string {
  try {
    return `${ipaddr.IPv4.networkAddressFromCIDR(`${meshIp}/${prefixLen}`).toString()}/${prefixLen}`;
  } catch {
    throw invalid("meshIp", `"${meshIp}/${prefixLen}" is not an IPv4 CIDR`);
  }
}

/**
 * The whole view of host `selfId`. Other hosts without a WireGuard key or port (an agent
 * that registered none) cannot be peers and are left out rather than failing the host.
 */
export function meshView(snap: MeshSnapshot, selfId: string, s: MeshSettings): MeshView {
  const self = snap.members.find((m) => m.hostId === selfId);
  if (!self) throw invalid("mesh", `host ${selfId} is not in its own mesh snapshot`);
  if (!self.meshIp) throw invalid("mesh", `host ${selfId} has no mesh address yet`);
  const meshCidr = meshCidrOf(self.meshIp, snap.meshPrefixLen);
  const members: MeshMember[] = snap.members
    .filter((m) => m.hostId === selfId || (m.wireguardPublicKey !== "" && m.wireguardPort > 0 && m.meshIp !== ""))
    .map((m) => ({
      hostId: m.hostId,
      name: m.name,
      underlay: m.address,
      wgPublicKey: m.wireguardPublicKey,
      wgPort: m.wireguardPort,
      meshIp: m.meshIp,
      networks: m.networks.map((n) => ({
        networkId: n.networkId,
        vni: n.vni,
        mode: (n.mode === "vxlan" ? "vxlan" : "wireguard") as Transport,
        cidr: n.cidr,
        gateway: n.gateway,
        vms: n.vms.map((v) => ({ mac: v.mac.toLowerCase(), ip: bareIp(v.ip) })),
      })),
    }));
  const raw = hostMesh(members, selfId, { meshCidr, uplinkMtu: s.uplinkMtu });
  const desired: HostMeshDesired = { ...raw, wg: { ...raw.wg, ifname: s.wgIfname } };

  const networks = new Map<string, { cidr: string; gateway: string; vni: number }>();
  const networkVms = new Map<string, PolicyVm[]>();
  for (const n of self.networks) networks.set(n.networkId, { cidr: n.cidr, gateway: n.gateway, vni: n.vni });
  for (const m of snap.members) {
    for (const n of m.networks) {
      if (!networks.has(n.networkId)) continue;
      const list = networkVms.get(n.networkId) ?? [];
      for (const v of n.vms) list.push({ vmId: v.vmId, ip: bareIp(v.ip), group: v.networkGroup, isolated: v.isolated });
      networkVms.set(n.networkId, list);
    }
  }

  const local = new Map<string, VmAttachment>();
  for (const n of self.networks) {
    const spec = desired.networks.find((x) => x.networkId === n.networkId);
    if (!spec) continue;
    const prefixLen = Number(n.cidr.split("/")[1]);
    for (const v of n.vms) {
      local.set(v.vmId, {
        vmId: v.vmId,
        networkId: n.networkId,
        vni: n.vni,
        bridge: spec.bridge.name,
        mtu: spec.bridge.mtu,
        gateway: n.gateway,
        prefixLen,
        mac: v.mac.toLowerCase(),
        ip: bareIp(v.ip),
      });
    }
  }
  return { selfId, members, meshCidr, desired, local, networkVms, networks, selfNetworks: self.networks };
}

/**
 * The addresses VM `vmId` of network `networkId` may reach inside the network: its gateway,
 * and, unless it is isolated, every other non-isolated VM of the same network group ("" is
 * a group of its own), wherever it runs. Symmetric by construction.
 */
export function allowedPeers(view: MeshView, networkId: string, vmId: string): string[] {
  const net = view.networks.get(networkId);
  if (!net) throw invalid("networkId", `network ${networkId} is not on host ${view.selfId}`);
  const vms = view.networkVms.get(networkId) ?? [];
  const me = vms.find((v) => v.vmId === vmId);
  const out = new Set([net.gateway]);
  if (me && !me.isolated) {
    for (const v of vms) if (v.vmId !== vmId && !v.isolated && v.group === me.group && v.ip) out.add(v.ip);
  }
  return [...out].sort();
}

/**
 * The guards of this host: one entry per local VM whose port exists (`ports`: VM id -> host
 * port from the driver), with its peer policy, plus the VXLAN uplinks of its networks.
 */
export function guardSpecOf(view: MeshView, ports: ReadonlyMap<string, string>): GuardSpec {
  const vms: GuardVm[] = [];
  for (const a of [...view.local.values()].sort((x, y) => x.vmId.localeCompare(y.vmId))) {
    const port = ports.get(a.vmId);
    if (!port || !a.ip) continue;
    const net = view.networks.get(a.networkId)!;
    vms.push({ vmId: a.vmId, port, mac: a.mac, ip: a.ip, peers: { cidr: net.cidr, allowed: allowedPeers(view, a.networkId, a.vmId) } });
  }
  const uplinks = view.desired.networks.map((n) => ({ port: vxlanName(n.vni), gateway: view.networks.get(n.networkId)!.gateway }));
  return { vms, uplinks };
}
