// The address allocator: pure. The store makes a choice stick (ipam/<net>/<ip>
// is created only if absent, and the network's IpamStateRecord is compared);
// this only decides which address to propose.
//
// Round-robin from the last address handed out, so a freshly released
// address goes to the back of the line; on top of that an address released
// less than the grace period ago is never handed out, so peers' ARP caches and
// in-flight packets for the old VM cannot reach a new one.
import { vmCapacity, vmRange, type Cidr } from "./cidr.js";

export interface IpamView {
  cidr: Cidr;
  /** Addresses held by VMs. */
  used: ReadonlySet<number>;
  /** Address -> when it was released (ms since epoch). */
  releasedAt: ReadonlyMap<number, number>;
  /** Last address handed out (the cursor); undefined for none yet. */
  last: number | undefined;
}

export interface Usage {
  used: number;
  total: number;
  /** used / total, 0..1. */
  ratio: number;
  /** At or above 90%: time to alert (or to give the tenant a bigger network). */
  nearlyFull: boolean;
}

export const NEARLY_FULL = 0.9;

export function usage(cidr: Cidr, used: number): Usage {
  const total = vmCapacity(cidr);
  const ratio = total === 0 ? 1 : used / total;
  return { used, total, ratio, nearlyFull: ratio >= NEARLY_FULL };
}

export type Allocation =
  | { ok: true; ip: number; usage: Usage }
  | { ok: false; reason: string; usage: Usage; cooling: number };

export function isCooling(releasedAtMs: number | undefined, nowMs: number, graceMs: number): boolean {
  return releasedAtMs !== undefined && nowMs - releasedAtMs < graceMs;
}

export function allocate(view: IpamView, nowMs: number, graceMs: number): Allocation {
  const { first, last } = vmRange(view.cidr);
  const n = last - first + 1;
  // Start right after the cursor (wrapping), or at the first address.
  const start = view.last !== undefined && view.last >= first && view.last <= last ? ((view.last - first + 1) % n) : 0;
  let cooling = 0;
  for (let i = 0; i < n; i++) {
    const ip = first + ((start + i) % n);
    if (view.used.has(ip)) continue;
    if (isCooling(view.releasedAt.get(ip), nowMs, graceMs)) {
      cooling++;
      continue;
    }
    return { ok: true, ip, usage: usage(view.cidr, view.used.size + 1) };
  }
  const u = usage(view.cidr, view.used.size);
  const reason =
    cooling > 0
      ? `no free address: ${u.used} of ${u.total} held, ${cooling} released less than ${Math.round(graceMs / 1000)}s ago (reuse grace)`
      : `network is full: ${u.used} of ${u.total} addresses held`;
  return { ok: false, reason, usage: u, cooling };
}

/** Released entries past their grace: safe to forget. */
export function expiredReleases(releasedAt: ReadonlyMap<number, number>, nowMs: number, graceMs: number): number[] {
  return [...releasedAt].filter(([, t]) => !isCooling(t, nowMs, graceMs)).map(([ip]) => ip);
}
