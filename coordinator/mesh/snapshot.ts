// What each host must know of the mesh, computed purely from the cluster
// state: every live host is a WireGuard peer; of the tenant networks, a host
// learns only those it carries itself, with the VMs every other host has in
// them (for VXLAN FDB entries and guards).
import { createHash } from "node:crypto";
import { MeshMember, MeshNetwork, type MeshDelta, type MeshSnapshot } from "../../gen/noid/v1/agent.js";
import type { Host } from "../../gen/noid/v1/host.js";
import type { Network } from "../../gen/noid/v1/network.js";
import { VmDesiredState, type Vm } from "../../gen/noid/v1/vm.js";
import { compareMembers, compareNetworks, compareVms, diffMesh, lowerBound } from "../../common/mesh-delta.js";

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
    let byNet = out.get(st.hostId);
    if (!byNet) out.set(st.hostId, (byNet = new Map<string, Vm[]>()));
    const list = byNet.get(st.networkId);
    if (list) list.push(vm);
    else byNet.set(st.networkId, [vm]);
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
      .sort(compareVms),
  };
}

/** The snapshot for host `self`: live hosts as members, networks limited to those `self` carries. */
export function meshSnapshotFor(self: string, inp: MeshInputs): MeshSnapshot {
  return meshSnapshotFromView(self, buildMeshView(inp), inp.meshPrefixLen).snapshot;
}

/**
 * What every host's snapshot is made of, computed once for a state of the
 * cluster; meshSnapshotFromView then adds what is particular to one host.
 */
export interface MeshView {
  byHost: Map<string, Map<string, Vm[]>>;
  networks: Map<string, Network>;
  /** Members (without networks) of the live hosts that have a mesh address, sorted by name. */
  live: MeshMember[];
  liveIds: Set<string>;
  /** Hash of `live`. */
  liveKey: string;
  hostsById: Map<string, Host>;
  /** Memo: "<hostId>/<networkId>" -> that host's part of the network, and its hash. */
  parts: Map<string, { net: MeshNetwork; key: string }>;
}

// Members and their encodings are kept per host record (the informers keep a
// record's object until it changes): a member that did not change is the same
// object in every view, so diffs skip it at a glance and keys do not encode it
// again (a 1,000-host view is rebuilt on every join, leave and liveness change).
const members = new WeakMap<Host, MeshMember>();
const encodings = new WeakMap<MeshMember, Uint8Array>();

function memberOf(host: Host): MeshMember {
  let m = members.get(host);
  if (!m) {
    m = memberOfUncached(host);
    members.set(host, m);
  }
  return m;
}

function memberOfUncached(host: Host): MeshMember {
  return {
    hostId: host.id,
    name: host.name,
    address: host.address,
    wireguardPublicKey: host.wireguardPublicKey,
    wireguardPort: host.wireguardPort,
    meshIp: host.meshIp,
    networks: [],
  };
}

// The canonical order mesh deltas keep (common/mesh-delta.ts): by name.
const byName = compareMembers;

function membersKey(list: MeshMember[]): string {
  const h = createHash("sha1");
  for (const m of list) {
    let b = encodings.get(m);
    if (!b) {
      b = MeshMember.encode(m).finish();
      encodings.set(m, b);
    }
    h.update(b);
  }
  return h.digest("base64");
}

export function buildMeshView(inp: Omit<MeshInputs, "meshPrefixLen">): MeshView {
  const live = inp.hosts.filter(({ host, alive }) => alive && host.meshIp !== "").map(({ host }) => memberOf(host)).sort(byName);
  return {
    byHost: vmsByHostAndNetwork(inp.vms),
    networks: new Map(inp.networks.map((n) => [n.id, n])),
    live,
    liveIds: new Set(live.map((m) => m.hostId)),
    liveKey: membersKey(live),
    hostsById: new Map(inp.hosts.map(({ host }) => [host.id, host])),
    parts: new Map(),
  };
}

/** `list` (sorted by name) with `m` in its place: a copy and a binary search, not a sort. */
function insertSorted(list: MeshMember[], m: MeshMember): MeshMember[] {
  const at = lowerBound(list, m, byName);
  return [...list.slice(0, at), m, ...list.slice(at)];
}

/** The snapshot for host `self` from a view, and a key equal exactly when two snapshots of the same prefix length are. */
export function meshSnapshotFromView(self: string, v: MeshView, meshPrefixLen: number): { snapshot: MeshSnapshot; key: string; networks: ReadonlySet<string> } {
  let base = v.live;
  let baseKey = v.liveKey;
  const selfHost = v.hostsById.get(self);
  if (!v.liveIds.has(self) && selfHost && selfHost.meshIp !== "") {
    // A host not (yet) seen alive still sees itself.
    base = insertSorted(v.live, memberOf(selfHost));
    baseKey = membersKey(base);
  }
  const mine = new Set([...(v.byHost.get(self)?.keys() ?? [])].filter((id) => v.networks.has(id)));
  const h = createHash("sha1").update(`${meshPrefixLen}|${baseKey}`);
  if (mine.size === 0) return { snapshot: { members: base, meshPrefixLen }, key: h.digest("base64"), networks: mine };
  const members = base.map((m) => {
    const nets = [...(v.byHost.get(m.hostId)?.entries() ?? [])]
      .filter(([netId]) => mine.has(netId))
      .map(([netId, vms]) => {
        const id = `${m.hostId}/${netId}`;
        let part = v.parts.get(id);
        if (!part) {
          const net = meshNetwork(v.networks.get(netId)!, vms);
          part = { net, key: createHash("sha1").update(MeshNetwork.encode(net).finish()).digest("base64") };
          v.parts.set(id, part);
        }
        return part;
      })
      .sort((a, b) => compareNetworks(a.net, b.net));
    if (nets.length === 0) return m;
    h.update(`|${m.hostId}`);
    for (const p of nets) h.update(`:${p.key}`);
    return { ...m, networks: nets.map((p) => p.net) };
  });
  return { snapshot: { members, meshPrefixLen }, key: h.digest("base64"), networks: mine };
}

/** The fields of a host record a mesh snapshot shows. */
export function hostMeshKey(h: Host): string {
  return JSON.stringify([h.id, h.name, h.address, h.wireguardPublicKey, h.wireguardPort, h.meshIp]);
}

/** The fields of a VM a mesh snapshot shows ("" when it shows none of it). */
export function vmMeshKey(vm: Vm): string {
  const st = vm.status;
  if (!st?.hostId || !st.networkId || !st.mac || vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) return "";
  return JSON.stringify([st.hostId, st.networkId, st.mac, st.ip, vm.spec?.networkGroup ?? "", vm.spec?.network === "isolated"]);
}

/**
 * diffMesh(a, b), remembered by the identity of the two member lists (a
 * delta depends only on them and b's prefix length): every host that carries
 * no tenant network is sent the view's list itself, so a round over 1,000
 * such sessions costs one diff instead of 1,000 walks over 1,000 members.
 * Callers share the result and must not change it (they copy it to set their
 * base version). Weak keys: lists no session holds any more are let go.
 */
export class MeshDiffMemo {
  private readonly byBase = new WeakMap<readonly MeshMember[], WeakMap<readonly MeshMember[], MeshDelta>>();
  /** Diffs computed (the rest were shared). */
  computed = 0;

  diff(a: MeshSnapshot, b: MeshSnapshot): MeshDelta {
    let byNext = this.byBase.get(a.members);
    if (!byNext) {
      byNext = new WeakMap();
      this.byBase.set(a.members, byNext);
    }
    let d = byNext.get(b.members);
    if (!d || d.meshPrefixLen !== b.meshPrefixLen) {
      d = diffMesh(a, b);
      this.computed++;
      byNext.set(b.members, d);
    }
    return d;
  }
}
