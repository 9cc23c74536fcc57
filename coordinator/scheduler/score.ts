// Soft preferences: how much we like a host that already passed the filters.
// Pure; no I/O. Higher is better.
//
// Score = utilisation term (0..100)
//       + NETWORK_BONUS if the host already carries a VM of the same network
//       - ANTI_AFFINITY_PENALTY per VM of the same anti-affinity group on it.
//
// The utilisation term and the network bonus together stay below
// ANTI_AFFINITY_PENALTY, so a host with fewer VMs of the group always wins
// (anti-affinity spreads whenever it can), yet a host that already has some is
// still a valid choice (the VM is placed rather than refused). Network locality
// (+20) outweighs up to 20 points of utilisation difference: it saves a VXLAN
// flood entry and a WireGuard hop but is not worth overloading one host.
import type { HostView, Policy, VmRequest } from "./types.js";

export const NETWORK_BONUS = 20;
export const ANTI_AFFINITY_PENALTY = 1000;

/** One dimension's share of capacity in use after the request, 0..1 (only for a capacity above zero). */
function share(cap: number, allocated: number, req: number): number {
  return Math.min(1, Math.max(0, (allocated + req) / cap));
}

/**
 * Mean fraction of capacity in use AFTER placing a VM, 0..1, over the
 * dimensions the host actually has, from plain numbers (vCPUs, memory, disk:
 * capacity, allocated, requested): the one formula behind utilisationAfter
 * and the batch scheduler's flat arrays.
 */
export function utilisationOf(cV: number, cM: number, cD: number, aV: number, aM: number, aD: number, rV: number, rM: number, rD: number): number {
  // Summed in this order (vCPUs, memory, disk), skipping a dimension the host lacks (zero
  // capacity says nothing about load); no array: this runs once per host and VM scored.
  let sum = 0;
  let dims = 0;
  if (cV > 0) {
    sum += share(cV, aV, rV);
    dims++;
  }
  if (cM > 0) {
    sum += share(cM, aM, rM);
    dims++;
  }
  if (cD > 0) {
    sum += share(cD, aD, rD);
    dims++;
  }
  return dims === 0 ? 1 : sum / dims;
}

export function utilisationAfter(host: HostView, vm: VmRequest): number {
  const c = host.capacity;
  const a = host.allocated;
  const r = vm.resources;
  return utilisationOf(c.vcpus, c.memoryMb, c.diskGb, a.vcpus, a.memoryMb, a.diskGb, r.vcpus, r.memoryMb, r.diskGb);
}

/**
 * Rounded to 1e-6 so that hosts equal in substance score exactly equal (the
 * mean of the same ratios summed in another order can differ in the last bit),
 * which makes ties fall through to the name/id tie-break deterministically.
 */
function roundScore(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

/** The score from the utilisation after placing, whether the host carries the VM's network, and its VMs of the VM's group. */
export function scoreOf(utilisation: number, policy: Policy, sameNetwork: boolean, peers: number): number {
  const base = policy === "binpack" ? 100 * utilisation : 100 * (1 - utilisation);
  return roundScore(base + (sameNetwork ? NETWORK_BONUS : 0) - ANTI_AFFINITY_PENALTY * peers);
}

export function scoreHost(host: HostView, vm: VmRequest, policy: Policy): number {
  const local = vm.networkId !== "" && (host.networks[vm.networkId] ?? 0) > 0;
  const peers = vm.antiAffinityGroup !== "" ? (host.groups[vm.antiAffinityGroup] ?? 0) : 0;
  return scoreOf(utilisationAfter(host, vm), policy, local, peers);
}
