// What the coordinator wants on this host, in the agent's own terms (no proto types in the plan's input).
import type { VmCreateSpec } from "../drivers/driver.js";

/** "paused": kept in memory, frozen (drivers with the pause capability). */
export type DesiredRunState = "running" | "paused" | "stopped" | "deleted";

export interface DesiredVm {
  id: string;
  state: DesiredRunState;
  /** The driver the VM asks for; "" means the agent's default (its first) driver. */
  driver: string;
  spec: VmCreateSpec;
  /** Host-loss policy as the coordinator resolved it: with reschedule, the agent stops the VM itself once it has not renewed its lease for `graceMs` (fencing). */
  hostLoss?: { reschedule: boolean; graceMs: number };
  /** The VM's own labels (VmSpec.labels), when it has any: e.g. its declared listening ports. */
  labels?: Record<string, string>;
  /** The VM moves here: it runs from this migration's transferred state instead of booting. */
  incoming?: IncomingMigration;
}

export interface IncomingMigration {
  migrationId: string;
  sha256: string;
}
