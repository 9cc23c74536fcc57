// A VM's MAC address, derived from its id. Pure.
import { createHash } from "node:crypto";

/**
 * Locally administered (bit 1 of the first octet set), unicast (bit 0 clear),
 * the rest from a hash of the VM id. The agent derives the same value for a VM
 * that has none (agent/reconcile/desired.ts macFromId), so both sides agree;
 * the coordinator additionally makes it cluster-unique (macs/<mac>).
 */
export function macForVm(vmId: string): string {
  const h = createHash("sha256").update(`noid-mac:${vmId}`).digest();
  const bytes = [0x02, h[0] ?? 0, h[1] ?? 0, h[2] ?? 0, h[3] ?? 0, h[4] ?? 0];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}
