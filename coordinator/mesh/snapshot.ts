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

/**
 * The VMs mesh snapshots show (those vmMeshKey shows), by host and network,
 * kept up to date change by change instead of regrouping every VM for every
 * view (that was O(VMs) per mesh round: fine with 2,000 VMs, not with
 * 100,000). Copy on write: `snapshot()` hands out the current maps and the
 * next change copies what it alters (the outer map once per snapshot, a
 * host's map and one VM list per change), so a snapshot never changes and a
 * list that did not change is the same array in the next one (its mesh part
 * is then not computed again, see partOf).
 */
export class MeshVmIndex {
  private byHost = new Map<string, Map<string, readonly Vm[]>>();
  /** The outer map was handed out by snapshot(): copy it before the next change. */
  private shared = false;

  constructor(vms: Iterable<Vm> = []) {
    for (const vm of vms) this.change(undefined, vm);
  }

  /** The index as of now; later changes never alter what it returns. */
  snapshot(): ReadonlyMap<string, ReadonlyMap<string, readonly Vm[]>> {
    this.shared = true;
    return this.byHost;
  }

  /** A VM was written (`before` -> `after`) or removed (`after` undefined). */
  change(before: Vm | undefined, after: Vm | undefined): void {
    const kb = before ? vmMeshKey(before) : "";
    const ka = after ? vmMeshKey(after) : "";
    // Same mesh fields (a phase or timestamp changed): the list keeps the VM it has.
    if (kb === ka) return;
    if (kb !== "") this.edit(before!, (list) => list.filter((v) => v.id !== before!.id));
    if (ka !== "") this.edit(after!, (list) => [...list.filter((v) => v.id !== after!.id), after!]);
  }

  private edit(vm: Vm, f: (list: readonly Vm[]) => Vm[]): void {
    const hostId = vm.status!.hostId;
    const netId = vm.status!.networkId;
    if (this.shared) {
      this.byHost = new Map(this.byHost);
      this.shared = false;
    }
    // A host's map is small (the networks it carries): copied on every change, never shared mutable.
    const nets = new Map(this.byHost.get(hostId) ?? []);
    const list = f(nets.get(netId) ?? []);
    if (list.length > 0) nets.set(netId, list);
    else nets.delete(netId);
    if (nets.size > 0) this.byHost.set(hostId, nets);
    else this.byHost.delete(hostId);
  }
}

export function meshNetwork(n: Network, vms: readonly Vm[]): MeshNetwork {
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
export interface MeshView extends MeshHosts {
  byHost: ReadonlyMap<string, ReadonlyMap<string, readonly Vm[]>>;
  networks: ReadonlyMap<string, Network>;
}

/** The part of a view made of host records and liveness only (kept while neither changes). */
export interface MeshHosts {
  /** Members (without networks) of the live hosts that have a mesh address, sorted by name. */
  live: MeshMember[];
  liveIds: ReadonlySet<string>;
  /** Hash of `live`. */
  liveKey: string;
  hostsById: ReadonlyMap<string, Host>;
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
  return {
    ...meshHosts(inp.hosts),
    byHost: new MeshVmIndex(inp.vms).snapshot(),
    networks: new Map(inp.networks.map((n) => [n.id, n])),
  };
}

export function meshHosts(hosts: MeshInputs["hosts"]): MeshHosts {
  const live = hosts.filter(({ host, alive }) => alive && host.meshIp !== "").map(({ host }) => memberOf(host)).sort(byName);
  return {
    live,
    liveIds: new Set(live.map((m) => m.hostId)),
    liveKey: membersKey(live),
    hostsById: new Map(hosts.map(({ host }) => [host.id, host])),
  };
}

// A host's part of a network depends only on the network record and the host's VM list in it;
// both are kept as the same objects until they change (informer records, MeshVmIndex lists),
// so the part is remembered by them across views: a round computes only the parts that changed.
const parts = new WeakMap<Network, WeakMap<readonly Vm[], { net: MeshNetwork; key: string }>>();

function partOf(network: Network, vms: readonly Vm[]): { net: MeshNetwork; key: string } {
  let byList = parts.get(network);
  if (!byList) parts.set(network, (byList = new WeakMap()));
  let part = byList.get(vms);
  if (!part) {
    const net = meshNetwork(network, vms);
    part = { net, key: createHash("sha1").update(MeshNetwork.encode(net).finish()).digest("base64") };
    byList.set(vms, part);
  }
  return part;
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
    // The networks of `self` this member carries: looked up by `self`'s few networks, not by
    // listing each member's (a session of a 1,000-host mesh did that for every member).
    const carried = v.byHost.get(m.hostId);
    if (!carried) return m;
    let nets: { net: MeshNetwork; key: string }[] | undefined;
    for (const netId of mine) {
      const vms = carried.get(netId);
      if (vms) (nets ??= []).push(partOf(v.networks.get(netId)!, vms));
    }
    if (!nets) return m;
    if (nets.length > 1) nets.sort((a, b) => compareNetworks(a.net, b.net));
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
