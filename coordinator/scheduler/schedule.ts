// Placement decisions as data: filter, score, pick. Pure and deterministic;
// no I/O, no clock, no randomness. The coordinator writes the decisions (and
// the allocation records built with applyPlacement/releasePlacement) to etcd.
import { filterHosts, freeCovers, passesStatic, unplacedReason } from "./filter.js";
import { scoreHost, scoreOf, utilisationOf } from "./score.js";
import type { Decision, HostView, Policy, Res, VmRequest } from "./types.js";

function cloneHost(h: HostView): HostView {
  return {
    ...h,
    labels: { ...h.labels },
    drivers: [...h.drivers],
    capacity: { ...h.capacity },
    allocated: { ...h.allocated },
    groups: { ...h.groups },
    networks: { ...h.networks },
  };
}

function addCount(m: Record<string, number>, key: string, delta: number): Record<string, number> {
  if (key === "") return { ...m };
  const next = { ...m };
  const n = Math.max(0, (next[key] ?? 0) + delta);
  // Drop zero entries so a place/release round trip gives back an equal view.
  if (n === 0) delete next[key];
  else next[key] = n;
  return next;
}

/** The host view after the VM is placed on it. Does not check that it fits. */
export function applyPlacement(host: HostView, vm: VmRequest): HostView {
  const r = vm.resources;
  const a = host.allocated;
  return {
    ...cloneHost(host),
    allocated: { vcpus: a.vcpus + r.vcpus, memoryMb: a.memoryMb + r.memoryMb, diskGb: a.diskGb + r.diskGb },
    vmCount: host.vmCount + 1,
    groups: addCount(host.groups, vm.antiAffinityGroup, 1),
    networks: addCount(host.networks, vm.networkId, 1),
  };
}

/**
 * The host view after the VM is removed. Never goes below zero, so releasing
 * twice (a retried delete, a record written by an older version) is harmless.
 */
export function releasePlacement(host: HostView, vm: VmRequest): HostView {
  const r = vm.resources;
  const a = host.allocated;
  const sub = (x: number, y: number): number => Math.max(0, x - y);
  const allocated: Res = {
    vcpus: sub(a.vcpus, r.vcpus),
    memoryMb: sub(a.memoryMb, r.memoryMb),
    diskGb: sub(a.diskGb, r.diskGb),
  };
  return {
    ...cloneHost(host),
    allocated,
    vmCount: Math.max(0, host.vmCount - 1),
    groups: addCount(host.groups, vm.antiAffinityGroup, -1),
    networks: addCount(host.networks, vm.networkId, -1),
  };
}

/** Between hosts of equal score: the lower name, then the lower id (names are unique in practice; ids always). */
function firstByName(a: HostView, b: HostView): boolean {
  if (a.name !== b.name) return a.name < b.name;
  return a.id < b.id;
}

/** Best first: highest score, then host name, then id. */
function better(a: { host: HostView; score: number }, b: { host: HostView; score: number }): boolean {
  if (a.score !== b.score) return a.score > b.score;
  return firstByName(a.host, b.host);
}

/** Decision plus the position of the chosen host, so a batch updates exactly that view. */
function decide(
  hosts: readonly HostView[],
  vm: VmRequest,
  policy: Policy,
): { decision: Decision; index: number } {
  const { fit, filtered } = filterHosts(hosts, vm);
  let best: { host: HostView; score: number } | undefined;
  for (const host of fit) {
    const cand = { host, score: scoreHost(host, vm, policy) };
    if (best === undefined || better(cand, best)) best = cand;
  }
  if (best === undefined) {
    return {
      decision: { vmId: vm.id, placed: false, reason: unplacedReason(hosts, vm, filtered), filtered },
      index: -1,
    };
  }
  return {
    decision: { vmId: vm.id, placed: true, hostId: best.host.id, score: best.score },
    index: hosts.indexOf(best.host),
  };
}

/** Picks a host for one VM. Inputs are not modified. */
export function scheduleOne(hosts: readonly HostView[], vm: VmRequest, policy: Policy): Decision {
  return decide(hosts, vm, policy).decision;
}

/**
 * The hosts a VM's static filters (ready, cordon, posture, pin, driver,
 * labels) let through depend only on its pin, driver and selector, and a
 * batch never changes them: a batch computes them once per distinct
 * requirement instead of running every filter for every VM and host.
 */
function requirementKey(vm: VmRequest): string {
  const sel = Object.keys(vm.hostSelector)
    .sort()
    .map((k) => `${k}=${vm.hostSelector[k]}`)
    .join("\u0000");
  return `${vm.host}\u0001${vm.driver}\u0001${sel}`;
}

/**
 * A batch in progress: the host views are copied once, then VMs are decided
 * one at a time, each seeing the hosts as the earlier ones left them (the
 * same decisions as scheduleOne + applyPlacement step by step). A VM costs
 * one cheap pass over the hosts its static filters admit; only a VM that
 * fits nowhere runs the full filters again, for the reason a user reads.
 *
 * The pass reads numbers from flat arrays (capacity and allocation per
 * dimension, VMs of the VM's network and group per host) instead of the
 * views' objects, through the same functions fitsResources and scoreHost use
 * (freeCovers, utilisationOf, scoreOf): the same decisions at a fraction of
 * the cost (460 ns per host scored through the views, BENCHMARKS finding 11).
 */
export class BatchScheduler {
  private current: HostView[] = [];
  /** The view each host's numbers were last read from (update goes back to it for hosts decided for). */
  private base: HostView[] = [];
  /** Hosts a decision changed since the last update: read again from their view then. */
  private readonly decided = new Set<number>();
  /** Per static requirement: the VM that stands for it, which hosts admit it (flags), and their list (rebuilt when a flag changes). */
  private readonly eligible = new Map<string, { vm: VmRequest; flags: Uint8Array; list: Int32Array | undefined }>();
  /** Capacity and allocation per host (index as in `current`), dimension by dimension. */
  private capV = new Float64Array(0);
  private capM = new Float64Array(0);
  private capD = new Float64Array(0);
  private allocV = new Float64Array(0);
  private allocM = new Float64Array(0);
  private allocD = new Float64Array(0);
  /** VMs of a network (or anti-affinity group) per host, built the first time a VM of it is decided. */
  private readonly netCounts = new Map<string, Int32Array>();
  private readonly groupCounts = new Map<string, Int32Array>();

  constructor(
    hosts: readonly HostView[],
    private readonly policy: Policy,
  ) {
    this.reset(hosts);
  }

  /** The host views as the decisions so far left them (same order as given; a host nothing was placed on is the input's view). */
  get hosts(): HostView[] {
    return this.current;
  }

  private reset(hosts: readonly HostView[]): void {
    // applyPlacement derives a new view, so the input views are never changed: no copies.
    this.current = [...hosts];
    this.base = [...hosts];
    this.decided.clear();
    this.eligible.clear();
    this.netCounts.clear();
    this.groupCounts.clear();
    const n = hosts.length;
    this.capV = new Float64Array(n);
    this.capM = new Float64Array(n);
    this.capD = new Float64Array(n);
    this.allocV = new Float64Array(n);
    this.allocM = new Float64Array(n);
    this.allocD = new Float64Array(n);
    for (let i = 0; i < n; i++) this.read(i, hosts[i]!);
  }

  private read(i: number, h: HostView): void {
    this.capV[i] = h.capacity.vcpus;
    this.capM[i] = h.capacity.memoryMb;
    this.capD[i] = h.capacity.diskGb;
    this.allocV[i] = h.allocated.vcpus;
    this.allocM[i] = h.allocated.memoryMb;
    this.allocD[i] = h.allocated.diskGb;
  }

  /**
   * Continues from the same list of hosts with the views at these places
   * replaced, forgetting the decisions made so far: afterwards it decides
   * exactly as a new BatchScheduler on that list would. Only the hosts
   * replaced, and those it decided for, are read again: a create at 1,000
   * hosts changes a few views (ClusterState.hostViewsSince says which), and
   * scanning the whole list for them was most of the scheduler's time per
   * create (BENCHMARKS.md finding 17).
   */
  update(changes: ReadonlyMap<number, HostView>): void {
    for (const i of this.decided) if (!changes.has(i)) this.reread(i, this.base[i]!);
    for (const [i, h] of changes) this.reread(i, h);
    this.decided.clear();
  }

  /** Host `i` is now `h`: its arrays, static filters and counts read again. */
  private reread(i: number, h: HostView): void {
    this.current[i] = h;
    this.base[i] = h;
    this.read(i, h);
    for (const e of this.eligible.values()) {
      const ok = passesStatic(h, e.vm) ? 1 : 0;
      if (e.flags[i] !== ok) {
        e.flags[i] = ok;
        e.list = undefined;
      }
    }
    for (const [key, arr] of this.netCounts) arr[i] = h.networks[key] ?? 0;
    for (const [key, arr] of this.groupCounts) arr[i] = h.groups[key] ?? 0;
  }

  private counts(cache: Map<string, Int32Array>, key: string, of: (h: HostView) => Record<string, number>): Int32Array {
    let arr = cache.get(key);
    if (arr === undefined) {
      arr = new Int32Array(this.current.length);
      for (let i = 0; i < this.current.length; i++) arr[i] = of(this.current[i]!)[key] ?? 0;
      cache.set(key, arr);
    }
    return arr;
  }

  private admitted(vm: VmRequest): Int32Array {
    const key = requirementKey(vm);
    let e = this.eligible.get(key);
    if (e === undefined) {
      const flags = new Uint8Array(this.current.length);
      for (let i = 0; i < this.current.length; i++) flags[i] = passesStatic(this.current[i]!, vm) ? 1 : 0;
      e = { vm, flags, list: undefined };
      this.eligible.set(key, e);
    }
    if (e.list === undefined) {
      const list: number[] = [];
      for (let i = 0; i < e.flags.length; i++) if (e.flags[i]) list.push(i);
      e.list = Int32Array.from(list);
    }
    return e.list;
  }

  /**
   * Decides one VM and counts it on the host chosen. Hosts whose id is in
   * `skip` are not chosen by the cheap pass; a VM that fits none of the
   * others is decided by the full filters over every host, for the reason
   * (which may then name a skipped host: the caller checks).
   */
  decide(vm: VmRequest, skip?: ReadonlySet<string>): Decision {
    const admitted = this.admitted(vm);
    const { capV, capM, capD, allocV, allocM, allocD } = this;
    const rV = vm.resources.vcpus;
    const rM = vm.resources.memoryMb;
    const rD = vm.resources.diskGb;
    const net = vm.networkId === "" ? undefined : this.counts(this.netCounts, vm.networkId, (h) => h.networks);
    const group = vm.antiAffinityGroup === "" ? undefined : this.counts(this.groupCounts, vm.antiAffinityGroup, (h) => h.groups);
    const skipping = skip !== undefined && skip.size > 0;
    let best = -1;
    let bestScore = 0;
    for (let k = 0; k < admitted.length; k++) {
      const i = admitted[k]!;
      const cV = capV[i]!;
      const cM = capM[i]!;
      const cD = capD[i]!;
      const aV = allocV[i]!;
      const aM = allocM[i]!;
      const aD = allocD[i]!;
      if (!freeCovers(cV - aV, cM - aM, cD - aD, vm.resources)) continue;
      if (skipping && skip.has(this.current[i]!.id)) continue;
      const u = utilisationOf(cV, cM, cD, aV, aM, aD, rV, rM, rD);
      const score = scoreOf(u, this.policy, net !== undefined && net[i]! > 0, group !== undefined ? group[i]! : 0);
      if (best < 0 || score > bestScore || (score === bestScore && firstByName(this.current[i]!, this.current[best]!))) {
        best = i;
        bestScore = score;
      }
    }
    if (best < 0) return decide(this.current, vm, this.policy).decision;
    const chosen = this.current[best]!;
    this.current[best] = applyPlacement(chosen, vm);
    this.decided.add(best);
    allocV[best] = allocV[best]! + rV;
    allocM[best] = allocM[best]! + rM;
    allocD[best] = allocD[best]! + rD;
    if (net !== undefined) net[best] = net[best]! + 1;
    if (group !== undefined) group[best] = group[best]! + 1;
    return { vmId: vm.id, placed: true, hostId: chosen.id, score: bestScore };
  }
}

/**
 * Places VMs one after another in the given order, each seeing the hosts as
 * the earlier placements left them. Returns one decision per VM (same order)
 * and the updated host views (fresh copies, same order as the input); inputs
 * are not modified.
 */
export function scheduleBatch(
  hosts: readonly HostView[],
  vms: readonly VmRequest[],
  policy: Policy,
): { decisions: Decision[]; hosts: HostView[] } {
  const batch = new BatchScheduler(hosts, policy);
  const decisions = vms.map((vm) => batch.decide(vm));
  return { decisions, hosts: batch.hosts.map(cloneHost) };
}
