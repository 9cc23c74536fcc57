// Mesh deltas, pure: diffMesh(A, B) is what changed from snapshot A to
// snapshot B (members added, changed, removed; per member the networks added,
// changed, removed; per network the VMs, i.e. the FDB entries, added, changed,
// removed), and applyMeshDelta(A, diffMesh(A, B)) equals B. The coordinator
// diffs what it last sent a session against the new view; the agent applies
// the delta to its last snapshot and hands the result on as a snapshot.
//
// Snapshots are in canonical order (members by compareMembers, a member's
// networks by compareNetworks, a network's VMs by compareVms; keys unique at
// each level), which is how the coordinator builds them; apply keeps that
// order without sorting whole lists (an agent of a 1,000-host mesh applies
// many small deltas).
import type {
  MeshDelta,
  MeshMember,
  MeshMemberNetworksDelta,
  MeshNetwork,
  MeshNetworkVmsDelta,
  MeshSnapshot,
  MeshUpdate,
  MeshVm,
} from "../gen/noid/v1/agent.js";

/** A delta that cannot be applied to the snapshot it was given (the agent lost track: ask for a full one). */
export class MeshDeltaGap extends Error {}

const plain = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);

export const compareMembers = (a: MeshMember, b: MeshMember): number => a.name.localeCompare(b.name) || plain(a.name, b.name) || plain(a.hostId, b.hostId);
export const compareNetworks = (a: MeshNetwork, b: MeshNetwork): number => a.vni - b.vni || plain(a.networkId, b.networkId);
export const compareVms = (a: MeshVm, b: MeshVm): number => a.vmId.localeCompare(b.vmId) || plain(a.vmId, b.vmId);

/** A member's own fields (all but `networks`); a change of one sends the whole member. */
export const MEMBER_FIELDS = ["hostId", "name", "address", "wireguardPublicKey", "wireguardPort", "meshIp"] as const;
/** A network's settings (all but `vms`); a change of one sends the whole network. */
export const NETWORK_FIELDS = ["networkId", "vni", "mode", "cidr", "gateway", "egressDenyAll", "egressAllow", "egressDeny"] as const;
export const VM_FIELDS = ["vmId", "mac", "ip", "networkGroup", "isolated"] as const;

function same<T>(a: T, b: T, fields: readonly (keyof T)[]): boolean {
  for (const f of fields) {
    const x = a[f];
    const y = b[f];
    if (x === y) continue;
    if (!Array.isArray(x) || !Array.isArray(y) || x.length !== y.length || x.some((v, i) => v !== y[i])) return false;
  }
  return true;
}

export function emptyDelta(d: MeshDelta): boolean {
  return d.upserted.length === 0 && d.removedHostIds.length === 0 && d.networks.length === 0;
}

/**
 * Pairs the items of two keyed lists: `both` for a key in each, `added` for
 * one only in `b`, `removed` for one only in `a`. Walks both in step while the
 * keys agree or differ by one item added or removed (the usual cases: the
 * same members; one joined or left), with a map only for what is left.
 */
function pair<T>(a: readonly T[], b: readonly T[], key: (x: T) => string, both: (x: T, y: T) => void, added: (y: T) => void, removed: (x: T) => void): void {
  const add = new Map<string, T>();
  const rem = new Map<string, T>();
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i]!;
    const y = b[j]!;
    const kx = key(x);
    const ky = key(y);
    if (kx === ky) {
      both(x, y);
      i++;
      j++;
    } else if (j + 1 < b.length && key(b[j + 1]!) === kx) {
      add.set(ky, y);
      j++;
    } else if (i + 1 < a.length && key(a[i + 1]!) === ky) {
      rem.set(kx, x);
      i++;
    } else break;
  }
  if (i < a.length || j < b.length) {
    const rest = new Map<string, T>();
    for (; i < a.length; i++) rest.set(key(a[i]!), a[i]!);
    for (; j < b.length; j++) {
      const y = b[j]!;
      const x = rest.get(key(y));
      if (x === undefined) add.set(key(y), y);
      else {
        rest.delete(key(y));
        both(x, y);
      }
    }
    for (const [k, x] of rest) rem.set(k, x);
  }
  // An item taken for added in one place and removed in another moved: it is in both.
  for (const [k, y] of add) {
    const x = rem.get(k);
    if (x === undefined) added(y);
    else {
      rem.delete(k);
      both(x, y);
    }
  }
  for (const x of rem.values()) removed(x);
}

function diffVms(a: readonly MeshVm[], b: readonly MeshVm[], networkId: string): MeshNetworkVmsDelta | undefined {
  if (a === b) return undefined;
  const d: MeshNetworkVmsDelta = { networkId, upserted: [], removedVmIds: [] };
  pair(
    a,
    b,
    (v) => v.vmId,
    (x, y) => {
      if (x !== y && !same(x, y, VM_FIELDS)) d.upserted.push(y);
    },
    (y) => d.upserted.push(y),
    (x) => d.removedVmIds.push(x.vmId),
  );
  return d.upserted.length || d.removedVmIds.length ? d : undefined;
}

function diffNetworks(a: readonly MeshNetwork[], b: readonly MeshNetwork[], hostId: string): MeshMemberNetworksDelta | undefined {
  if (a === b) return undefined;
  const d: MeshMemberNetworksDelta = { hostId, upserted: [], removedNetworkIds: [], vms: [] };
  pair(
    a,
    b,
    (n) => n.networkId,
    (x, y) => {
      if (x === y) return;
      if (!same(x, y, NETWORK_FIELDS)) return void d.upserted.push(y);
      const v = diffVms(x.vms, y.vms, y.networkId);
      if (v) d.vms.push(v);
    },
    (y) => d.upserted.push(y),
    (x) => d.removedNetworkIds.push(x.networkId),
  );
  return d.upserted.length || d.removedNetworkIds.length || d.vms.length ? d : undefined;
}

/** What turns snapshot `a` into snapshot `b` (base_version is the caller's to set). */
export function diffMesh(a: MeshSnapshot, b: MeshSnapshot): MeshDelta {
  const d: MeshDelta = { baseVersion: 0, meshPrefixLen: b.meshPrefixLen, upserted: [], removedHostIds: [], networks: [] };
  pair(
    a.members,
    b.members,
    (m) => m.hostId,
    (x, y) => {
      if (x === y) return;
      if (!same(x, y, MEMBER_FIELDS)) return void d.upserted.push(y);
      const n = diffNetworks(x.networks, y.networks, y.hostId);
      if (n) d.networks.push(n);
    },
    (y) => d.upserted.push(y),
    (x) => d.removedHostIds.push(x.hostId),
  );
  return d;
}

/**
 * `list` (in `cmp` order, keys unique) without the `removed` keys (each must
 * be there) and with `upserted` in place (replacing the item of the same key),
 * still in `cmp` order: one pass plus a binary insertion per upsert.
 */
/** The first index of sorted `list` whose element is not before `x` (where `x` goes to keep it sorted). */
export function lowerBound<T>(list: readonly T[], x: T, cmp: (a: T, b: T) => number): number {
  let lo = 0;
  let hi = list.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (cmp(list[mid]!, x) < 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function patchSorted<T>(list: readonly T[], key: (x: T) => string, removed: readonly string[], upserted: readonly T[], cmp: (a: T, b: T) => number, what: string): T[] {
  if (removed.length === 0 && upserted.length === 0) return [...list];
  const gone = new Set(removed);
  const replaced = new Set(upserted.map(key));
  const out: T[] = [];
  let found = 0;
  for (const x of list) {
    const k = key(x);
    if (gone.has(k)) found++;
    else if (!replaced.has(k)) out.push(x);
  }
  if (found !== gone.size) {
    const missing = [...gone].find((k) => !list.some((x) => key(x) === k));
    throw new MeshDeltaGap(`${what} ${missing} is not in the snapshot the delta applies to`);
  }
  for (const u of upserted) out.splice(lowerBound(out, u, cmp), 0, u);
  return out;
}

function applyNetworks(nets: readonly MeshNetwork[], d: MeshMemberNetworksDelta): MeshNetwork[] {
  const out = patchSorted(nets, (n) => n.networkId, d.removedNetworkIds, d.upserted, compareNetworks, "network");
  for (const v of d.vms) {
    const i = out.findIndex((n) => n.networkId === v.networkId);
    if (i < 0) throw new MeshDeltaGap(`network ${v.networkId} of host ${d.hostId} is not in the snapshot the delta applies to`);
    const n = out[i]!;
    out[i] = { ...n, vms: patchSorted(n.vms, (x) => x.vmId, v.removedVmIds, v.upserted, compareVms, "VM") };
  }
  return out;
}

/** Snapshot `a` changed by `d`; throws MeshDeltaGap when `d` does not fit `a`. Shares unchanged parts with `a`. */
export function applyMeshDelta(a: MeshSnapshot, d: MeshDelta): MeshSnapshot {
  const byNet = new Map(d.networks.map((n) => [n.hostId, n]));
  let members = a.members;
  if (byNet.size > 0) {
    members = a.members.map((m) => {
      const n = byNet.get(m.hostId);
      if (!n) return m;
      byNet.delete(m.hostId);
      return { ...m, networks: applyNetworks(m.networks, n) };
    });
    const lost = [...byNet.keys()][0];
    if (lost !== undefined) throw new MeshDeltaGap(`host ${lost} is not in the snapshot the delta applies to`);
  }
  members = patchSorted(members, (m) => m.hostId, d.removedHostIds, d.upserted, compareMembers, "host");
  return { members, meshPrefixLen: d.meshPrefixLen };
}

/** What a host does with one MeshUpdate (MeshViewTracker.take). */
export type MeshUpdateOutcome =
  | { kind: "snapshot"; snapshot: MeshSnapshot }
  /** The delta does not fit what this host holds: ask for a full snapshot (MeshResync). */
  | { kind: "resync"; haveVersion: number; reason: string }
  /** Nothing to do (a delta while a resync is pending, or an empty update). */
  | { kind: "ignore" };

/**
 * A host's side of the delta protocol: the last view it holds, and whether it
 * waits for a full snapshot after a gap. The agent's session and the bench's
 * simulated hosts both use it, so the bench measures the agent's behaviour.
 */
export class MeshViewTracker {
  private view: { version: number; snapshot: MeshSnapshot } | undefined;
  private resyncing = false;

  /** A new session (or a full snapshot outside the protocol): start from nothing. */
  reset(): void {
    this.view = undefined;
    this.resyncing = false;
  }

  take(u: MeshUpdate): MeshUpdateOutcome {
    let snapshot: MeshSnapshot;
    if (u.kind?.$case === "full") {
      snapshot = u.kind.value;
      this.resyncing = false;
    } else if (u.kind?.$case === "delta") {
      if (this.resyncing) return { kind: "ignore" };
      const d = u.kind.value;
      const have = this.view;
      try {
        if (!have || have.version !== d.baseVersion) throw new MeshDeltaGap(`delta ${u.version} applies to version ${d.baseVersion}, this host holds ${have?.version ?? "none"}`);
        snapshot = applyMeshDelta(have.snapshot, d);
      } catch (e) {
        this.resyncing = true;
        this.view = undefined;
        return { kind: "resync", haveVersion: have?.version ?? 0, reason: (e instanceof Error ? e.message : String(e)).slice(0, 200) };
      }
    } else return { kind: "ignore" };
    this.view = { version: u.version, snapshot };
    return { kind: "snapshot", snapshot };
  }
}
