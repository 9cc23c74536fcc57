// Address use per network, pure: for the IPAM metrics and their "about to run out" alert.
import type { Network } from "../../gen/noid/v1/network.js";
import type { Vm } from "../../gen/noid/v1/vm.js";

/** Share of a network's addresses in use from which it counts as nearly exhausted. */
export const EXHAUSTION_THRESHOLD = 0.9;

export interface NetworkUsage {
  networkId: string;
  name: string;
  owner: string;
  used: number;
  /** Addresses VMs can get: the range minus network, gateway and broadcast addresses. */
  total: number;
  nearlyExhausted: boolean;
}

export function assignable(cidr: string): number {
  const len = Number(cidr.split("/")[1]);
  if (!Number.isInteger(len) || len < 0 || len > 32) return 0;
  return Math.max(0, 2 ** (32 - len) - 3);
}

export function networkUsage(networks: readonly Network[], vms: readonly Vm[]): NetworkUsage[] {
  const used = new Map<string, number>();
  for (const v of vms) {
    const id = v.status?.networkId;
    if (id && v.status?.ip) used.set(id, (used.get(id) ?? 0) + 1);
  }
  return networks.map((n) => {
    const total = assignable(n.cidr);
    const u = used.get(n.id) ?? 0;
    return { networkId: n.id, name: n.name, owner: n.owner, used: u, total, nearlyExhausted: total > 0 && u >= total * EXHAUSTION_THRESHOLD };
  });
}
