// Translates the coordinator's Vm messages into DesiredVm. Pure.
import { createHash } from "node:crypto";
import { HostLossPolicy, Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";
import type { DesiredRunState, DesiredVm } from "./types.js";

/**
 * A stable MAC for a VM that has none assigned yet: locally administered (bit 1 of the
 * first octet set), unicast (bit 0 clear), the rest from a hash of the id, so every
 * agent and every restart derives the same one.
 */
export function macFromId(vmId: string): string {
  const h = createHash("sha256").update(`noid-mac:${vmId}`).digest();
  const bytes = [0x02, h[0] ?? 0, h[1] ?? 0, h[2] ?? 0, h[3] ?? 0, h[4] ?? 0];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

function desiredState(s: VmDesiredState): DesiredRunState {
  switch (s) {
    case VmDesiredState.VM_DESIRED_STATE_STOPPED:
      return "stopped";
    case VmDesiredState.VM_DESIRED_STATE_DELETED:
      return "deleted";
    case VmDesiredState.VM_DESIRED_STATE_PAUSED:
      return "paused";
    default:
      // UNSPECIFIED is treated as RUNNING: a VM is created to run.
      return "running";
  }
}

/** status.ip may carry a prefix ("10.0.0.5/24"); a bare address gets `defaultPrefixLen`. */
export function desiredFromVm(vm: Vm, defaultPrefixLen = 24): DesiredVm {
  const spec = vm.spec;
  const [ip = "", len] = (vm.status?.ip ?? "").split("/");
  const st = vm.status;
  const netLen = st?.networkCidr ? Number(st.networkCidr.split("/")[1]) : undefined;
  const labels = spec?.labels ?? {};
  const hl = spec?.hostLoss;
  return {
    ...(Object.keys(labels).length ? { labels } : {}),
    ...(hl && hl.graceSeconds > 0
      ? { hostLoss: { reschedule: hl.policy === HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, graceMs: hl.graceSeconds * 1000 } }
      : {}),
    id: vm.id,
    state: desiredState(vm.desiredState),
    driver: spec?.driver ?? "",
    ...(st?.migrationId ? { incoming: { migrationId: st.migrationId, sha256: st.migrationSha256 } } : {}),
    spec: {
      id: vm.id,
      vcpus: spec?.vcpus ?? 1,
      memoryMb: spec?.memoryMb ?? 256,
      diskGb: spec?.diskGb ?? 1,
      image: spec?.image ?? "",
      net: {
        mac: vm.status?.mac ? vm.status.mac.toLowerCase() : macFromId(vm.id),
        ip,
        prefixLen: len ? Number(len) : (netLen ?? defaultPrefixLen),
        ...(st?.networkId ? { networkId: st.networkId } : {}),
        ...(st?.gateway ? { gateway: st.gateway } : {}),
      },
      ...(spec?.sshAuthorizedKeys.length ? { sshAuthorizedKeys: [...spec.sshAuthorizedKeys] } : {}),
    },
  };
}
