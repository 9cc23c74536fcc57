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
import type { HostView, Policy, Res, VmRequest } from "./types.js";

export const NETWORK_BONUS = 20;
export const ANTI_AFFINITY_PENALTY = 1000;

const DIMENSIONS: readonly (keyof Res)[] = ["vcpus", "memoryMb", "diskGb"];

/**
 * Mean fraction of capacity in use AFTER placing the VM, 0..1, over the
 * dimensions the host actually has (a zero capacity says nothing about load).
 */
export function utilisationAfter(host: HostView, vm: VmRequest): number {
  let sum = 0;
  let dims = 0;
  for (const d of DIMENSIONS) {
    const cap = host.capacity[d];
    if (cap <= 0) continue;
    const used = host.allocated[d] + vm.resources[d];
    sum += Math.min(1, Math.max(0, used / cap));
    dims += 1;
  }
  return dims === 0 ? 1 : sum / dims;
}

/**
 * Rounded to 1e-6 so that hosts equal in substance score exactly equal (the
 * mean of the same ratios summed in another order can differ in the last bit),
 * which makes ties fall through to the name/id tie-break deterministically.
 */
export function roundScore(x: number): number {
  return Math.round(x * 1e6) / 1e6;
}

export function scoreHost(host: HostView, vm: VmRequest, policy: Policy): number {
  const u = utilisationAfter(host, vm);
  const base = policy === "binpack" ? 100 * u : 100 * (1 - u);
  const local = vm.networkId !== "" && (host.networks[vm.networkId] ?? 0) > 0 ? NETWORK_BONUS : 0;
  const peers = vm.antiAffinityGroup !== "" ? (host.groups[vm.antiAffinityGroup] ?? 0) : 0;
  return roundScore(base + local - ANTI_AFFINITY_PENALTY * peers);
}
