// Server-wide limits (noid's [limits] table), checked purely against the
// counters read in the same transaction that will write the VM.
import { exhausted } from "../common/errors.js";
import type { CoordinatorConfig } from "./config.js";
import type { QuotaRecord } from "../gen/noid/v1/records.js";

export type Limits = CoordinatorConfig["limits"];

export interface Ask {
  vcpus: number;
  memoryMb: number;
  diskGb: number;
}

/** Per-VM limits: independent of what anyone holds. */
export function checkVmLimits(limits: Limits, ask: Ask): void {
  if (ask.vcpus > limits.max_vcpus_per_vm) {
    throw exhausted(`max_vcpus_per_vm: a VM may have at most ${limits.max_vcpus_per_vm} vCPUs (asked ${ask.vcpus})`);
  }
  if (ask.memoryMb > limits.max_memory_per_vm) {
    throw exhausted(`max_memory_per_vm: a VM may have at most ${limits.max_memory_per_vm} MB of memory (asked ${ask.memoryMb})`);
  }
  if (ask.diskGb > limits.max_disk_per_vm) {
    throw exhausted(`max_disk_per_vm: a VM may have at most ${limits.max_disk_per_vm} GB of disk (asked ${ask.diskGb})`);
  }
}

/** Counting limits: the user's VMs and the cluster's. */
export function checkCountLimits(limits: Limits, user: string, userQuota: QuotaRecord, total: QuotaRecord): void {
  if (userQuota.vms + 1 > limits.max_vms_per_user) {
    throw exhausted(`max_vms_per_user: user ${user} already has ${userQuota.vms} of ${limits.max_vms_per_user} VMs`);
  }
  if (total.vms + 1 > limits.max_total_vms) {
    throw exhausted(`max_total_vms: the cluster already runs ${total.vms} of ${limits.max_total_vms} VMs`);
  }
}

export function addToQuota(q: QuotaRecord, ask: Ask, sign: 1 | -1): QuotaRecord {
  const clamp = (n: number) => Math.max(0, n);
  return {
    vms: clamp(q.vms + sign),
    vcpus: clamp(q.vcpus + sign * ask.vcpus),
    memoryMb: clamp(q.memoryMb + sign * ask.memoryMb),
  };
}

/** Exposed ports and HTTP routes of one user (noidctl expose). */
export function checkPortLimit(limits: Limits, user: string, held: number): void {
  if (held + 1 > limits.max_exposed_ports_per_user) {
    throw exhausted(`max_exposed_ports_per_user: user ${user} already exposes ${held} of ${limits.max_exposed_ports_per_user} ports and routes`);
  }
}
