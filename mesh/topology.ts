// The mesh topology, pure: "who is in the mesh" -> "what this host must have".
// Input is what the coordinator knows (live hosts, their keys and addresses, the tenant
// networks they carry and the VMs in them); output is the WireGuard peers, VXLAN devices,
// FDB entries and bridges of one host. No I/O: apply.ts turns it into commands.
import ipaddr from "ipaddr.js";
import { invalid } from "../common/errors.js";
import { VXLAN_PORT, WG_IFNAME, bridgeName, checkVni, gatewayMac, vxlanName } from "./names.js";

export type Transport = "wireguard" | "vxlan";

export interface MeshVm {
  mac: string;
  ip: string;
}

export interface MeshNetwork {
  networkId: string;
  vni: number;
  /** "wireguard": VXLAN between mesh IPs, inside WireGuard. "vxlan": VXLAN on the underlay, unencrypted. */
  mode: Transport;
  /** The tenant CIDR (gives the gateway's prefix length). */
  cidr: string;
  /** The distributed gateway, the same address on every host that has the network. */
  gateway: string;
  /** The network's VMs on this member. */
  vms: MeshVm[];
}

export interface MeshMember {
  hostId: string;
  name: string;
  /** Underlay IPv4 address (WireGuard endpoint; VTEP for "vxlan" networks). */
  underlay: string;
  wgPublicKey: string;
  wgPort: number;
  /** This host's address inside the mesh (VTEP for "wireguard" networks), from meshIpFor(). */
  meshIp: string;
  networks: MeshNetwork[];
}

export interface MeshSettings {
  /** The mesh's own range, e.g. 100.64.0.0/16; must not overlap underlays or tenant CIDRs. */
  meshCidr: string;
  /** MTU of the host's underlay uplink (1500 on most networks). */
  uplinkMtu: number;
}

export interface WgPeerSpec {
  hostId: string;
  publicKey: string;
  /** "underlay:port". */
  endpoint: string;
  allowedIps: string[];
}

export interface FdbEntrySpec {
  /** 00:00:00:00:00:00 = flood entry (broadcast, unknown unicast, multicast) toward `dst`. */
  mac: string;
  dst: string;
}

export interface NetworkSpec {
  networkId: string;
  vni: number;
  mode: Transport;
  vxlan: { name: string; vni: number; local: string; port: number; mtu: number };
  bridge: { name: string; mac: string; address: string; mtu: number };
  fdb: FdbEntrySpec[];
}

export interface HostMeshDesired {
  hostId: string;
  wg: { ifname: string; listenPort: number; publicKey: string; address: string; mtu: number; peers: WgPeerSpec[] };
  networks: NetworkSpec[];
}

export const FLOOD_MAC = "00:00:00:00:00:00";
/** Outer IPv4 (20) + UDP (8) + WireGuard header and tag (32). */
export const WG_OVERHEAD = 60;
/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;

export function mtus(uplinkMtu: number): { wg: number; vxlanOverWg: number; vxlan: number } {
  return { wg: uplinkMtu - WG_OVERHEAD, vxlanOverWg: uplinkMtu - WG_OVERHEAD - VXLAN_OVERHEAD, vxlan: uplinkMtu - VXLAN_OVERHEAD };
}

function parseV4Cidr(cidr: string, field: string): [ipaddr.IPv4, number] {
  try {
    const [a, len] = ipaddr.IPv4.parseCIDR(cidr);
    return [a, len];
  } catch {
    throw invalid(field, `"${cidr}" is not an IPv4 CIDR`);
  }
}

/** The mesh IP of the host with coordinator-assigned index `index` (1-based): network address + index. */
export function meshIpFor(meshCidr: string, index: number): string {
  const [net, len] = parseV4Cidr(meshCidr, "meshCidr");
  const size = 2 ** (32 - len);
  if (!Number.isInteger(index) || index < 1 || index > size - 2) {
    throw invalid("index", `${index} does not fit in ${meshCidr} (1..${size - 2})`);
  }
  const base = net.toByteArray().reduce((acc, b) => acc * 256 + b, 0);
  const start = base - (base % size);
  const n = start + index;
  return [n >>> 24, (n >>> 16) & 0xff, (n >>> 8) & 0xff, n & 0xff].join(".");
}

const macRe = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
const normMac = (mac: string): string => {
  const m = mac.toLowerCase();
  if (!macRe.test(m)) throw invalid("mac", `"${mac}" is not a MAC address`);
  return m;
};

const vtepOf = (m: MeshMember, mode: Transport): string => (mode === "wireguard" ? m.meshIp : m.underlay);
const byKey = <T>(key: (t: T) => string) => (a: T, b: T): number => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0);

/**
 * What host `selfId` must have. Members are the live hosts; a host that is gone is simply
 * not in the list, which removes its peer and every FDB entry toward it.
 */
export function hostMesh(members: readonly MeshMember[], selfId: string, settings: MeshSettings): HostMeshDesired {
  const self = members.find((m) => m.hostId === selfId);
  if (!self) throw invalid("self", `host ${selfId} is not a mesh member`);
  const ids = new Set<string>();
  const [meshNet, meshLen] = parseV4Cidr(settings.meshCidr, "meshCidr");
  for (const m of members) {
    if (ids.has(m.hostId)) throw invalid("members", `host ${m.hostId} listed twice`);
    ids.add(m.hostId);
    if (!ipaddr.IPv4.isValid(m.meshIp) || !ipaddr.IPv4.parse(m.meshIp).match(meshNet, meshLen)) {
      throw invalid("meshIp", `${m.meshIp} of host ${m.hostId} is not in ${settings.meshCidr}`);
    }
  }
  const others = members.filter((m) => m.hostId !== selfId).sort(byKey((m) => m.hostId));
  const mtu = mtus(settings.uplinkMtu);

  const peers: WgPeerSpec[] = others.map((m) => ({
    hostId: m.hostId,
    publicKey: m.wgPublicKey,
    endpoint: `${m.underlay}:${m.wgPort}`,
    allowedIps: [`${m.meshIp}/32`],
  }));

  const networks = [...self.networks].sort((a, b) => a.vni - b.vni).map((n): NetworkSpec => {
    checkVni(n.vni);
    const [, prefixLen] = parseV4Cidr(n.cidr, "cidr");
    const localMacs = new Set(n.vms.map((v) => normMac(v.mac)));
    const flood: FdbEntrySpec[] = [];
    const perMac = new Map<string, string>();
    for (const m of others) {
      const theirs = m.networks.find((x) => x.networkId === n.networkId);
      if (!theirs || theirs.vms.length === 0) continue;
      if (theirs.vni !== n.vni || theirs.mode !== n.mode) {
        throw invalid("networks", `network ${n.networkId} differs between hosts ${selfId} and ${m.hostId}`);
      }
      const dst = vtepOf(m, n.mode);
      flood.push({ mac: FLOOD_MAC, dst });
      // A MAC seen on two hosts (a move in progress) goes to the first by host id; a local one stays local.
      for (const v of theirs.vms) {
        const mac = normMac(v.mac);
        if (!localMacs.has(mac) && !perMac.has(mac)) perMac.set(mac, dst);
      }
    }
    const vxMtu = n.mode === "wireguard" ? mtu.vxlanOverWg : mtu.vxlan;
    return {
      networkId: n.networkId,
      vni: n.vni,
      mode: n.mode,
      vxlan: { name: vxlanName(n.vni), vni: n.vni, local: vtepOf(self, n.mode), port: VXLAN_PORT, mtu: vxMtu },
      bridge: { name: bridgeName(n.vni), mac: gatewayMac(n.vni), address: `${n.gateway}/${prefixLen}`, mtu: vxMtu },
      fdb: [...flood, ...[...perMac].map(([mac, dst]) => ({ mac, dst }))].sort(byKey((e) => `${e.mac} ${e.dst}`)),
    };
  });
  const vnis = new Set(networks.map((n) => n.vni));
  if (vnis.size !== networks.length) throw invalid("networks", `two networks of host ${selfId} share a VNI`);

  return {
    hostId: selfId,
    wg: {
      ifname: WG_IFNAME,
      listenPort: self.wgPort,
      publicKey: self.wgPublicKey,
      address: `${self.meshIp}/${meshLen}`,
      mtu: mtu.wg,
      peers,
    },
    networks,
  };
}
