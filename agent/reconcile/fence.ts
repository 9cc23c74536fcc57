// Fencing: an agent that has not renewed its host's lease (no heartbeat answered)
// for a VM's host-loss grace period stops that VM if its policy is "reschedule":
// by then the leader may be placing it on another host (it waits for the lease to
// expire, then the same grace), so stopping it here first means it never runs
// twice. The lease's TTL is the margin between the two. VMs with the keep policy
// run on: nobody else will start them.
//
// A healthy agent goes one heartbeat interval (and its ack's way back) between
// renewals, so a grace shorter than that would stop VMs on a host that is fine:
// no VM is fenced before two intervals without a renewal (the floor). That is
// still before the leader may move it: the coordinator's config keeps the
// interval at most a third of the lease's TTL, so the floor ends at least a
// third of a TTL before the lease can have expired, let alone the grace after.
//
// Fencing needs this process: a SIGSTOPped or killed agent cannot fence, so use
// the reschedule policy only where a stuck agent also means a stuck host (or the
// host is watched by a supervisor that restarts its agent within the grace).
import type { Logger } from "../../common/logger.js";
import type { DesiredVm } from "./types.js";

/** Heartbeat intervals without a renewal before any VM may be fenced (the floor, above). */
const FLOOR_INTERVALS = 2;

/**
 * Pure: the VMs to stop now, given when the lease was last known renewed (ms)
 * and the least time without a renewal that may fence (`floorMs`, see above).
 */
export function vmsToFence(desired: readonly DesiredVm[], lastRenewedAt: number | undefined, now: number, floorMs = 0): string[] {
  if (lastRenewedAt === undefined) return [];
  const out: string[] = [];
  for (const d of desired) {
    if (d.state !== "running" || !d.hostLoss?.reschedule) continue;
    if (now - lastRenewedAt >= Math.max(d.hostLoss.graceMs, floorMs)) out.push(d.id);
  }
  return out;
}

export interface FenceOptions {
  loop: { desiredVms(): DesiredVm[]; fence(ids: readonly string[]): void };
  /** When the coordinator last confirmed the lease (heartbeat ack or snapshot); undefined before the first. */
  lastRenewedAt: () => number | undefined;
  /** The heartbeat interval the coordinator asked for, ms (undefined before the first registration): no fence before two of them without a renewal. */
  heartbeatIntervalMs?: () => number | undefined;
  logger: Logger;
  /** Check period (default 250 ms). */
  everyMs?: number;
  now?: () => number;
}

/** Checks vmsToFence periodically and hands the result to the reconcile loop. */
export class Fence {
  private timer?: NodeJS.Timeout;

  constructor(private readonly o: FenceOptions) {}

  start(): void {
    this.timer = setInterval(() => this.check(), this.o.everyMs ?? 250);
    this.timer.unref();
  }

  check(): void {
    const floorMs = FLOOR_INTERVALS * (this.o.heartbeatIntervalMs?.() ?? 0);
    const ids = vmsToFence(this.o.loop.desiredVms(), this.o.lastRenewedAt(), (this.o.now ?? Date.now)(), floorMs);
    if (ids.length > 0) this.o.loop.fence(ids);
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }
}
