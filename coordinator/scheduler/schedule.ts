// Placement decisions as data: filter, score, pick. Pure and deterministic;
// no I/O, no clock, no randomness. The coordinator writes the decisions (and
// the allocation records built with applyPlacement/releasePlacement) to etcd.
import { filterHosts, fitsResources, passesStatic, unplacedReason } from "./filter.js";
import { scoreHost } from "./score.js";
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

/** Best first: highest score, then host name, then id (names are unique in practice; ids always). */
function better(a: { host: HostView; score: number }, b: { host: HostView; score: number }): boolean {
  if (a.score !== b.score) return a.score > b.score;
  if (a.host.name !== b.host.name) return a.host.name < b.host.name;
  return a.host.id < b.host.id;
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
 */
export class BatchScheduler {
  private readonly current: HostView[];
  private readonly eligible = new Map<string, number[]>();

  constructor(
    hosts: readonly HostView[],
    private readonly policy: Policy,
  ) {
    // applyPlacement derives a new view, so the input views are never changed: no copies.
    this.current = [...hosts];
  }

  /** The host views as the decisions so far left them (same order as given; a host nothing was placed on is the input's view). */
  get hosts(): HostView[] {
    return this.current;
  }

  decide(vm: VmRequest): Decision {
    const key = requirementKey(vm);
    let admitted = this.eligible.get(key);
    if (admitted === undefined) {
      admitted = [];
      for (let i = 0; i < this.current.length; i++) if (passesStatic(this.current[i]!, vm)) admitted.push(i);
      this.eligible.set(key, admitted);
    }
    let best = -1;
    let bestScore = 0;
    for (const i of admitted) {
      const host = this.current[i]!;
      if (!fitsResources(host, vm)) continue;
      const score = scoreHost(host, vm, this.policy);
      if (best < 0 || better({ host, score }, { host: this.current[best]!, score: bestScore })) {
        best = i;
        bestScore = score;
      }
    }
    if (best < 0) return decide(this.current, vm, this.policy).decision;
    const chosen = this.current[best]!;
    this.current[best] = applyPlacement(chosen, vm);
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
