// Pure rules of pause, resume and restart: which phase a VM must be in, and whether its
// driver (as its host reported it) can do it. No I/O; vm-repo applies the result in one
// transaction, the services map a refusal to FAILED_PRECONDITION.
import type { Host } from "../../gen/noid/v1/host.js";
import { VmDesiredState, VmPhase, type Vm } from "../../gen/noid/v1/vm.js";

export type LifecycleOp = "pause" | "resume" | "restart";

const phaseName = (p: VmPhase | undefined): string => (VmPhase[p ?? 0] ?? "UNKNOWN").replace("VM_PHASE_", "");

/** The driver that runs (or will run) the VM on `host`: its spec's, else the host's default. */
export function effectiveDriver(vm: Vm, host: Host | undefined): string {
  return vm.spec?.driver || host?.drivers[0] || "";
}

/** Why the VM's driver cannot do `capability`, or undefined when it can. */
export function missingCapability(vm: Vm, host: Host | undefined, capability: string): string | undefined {
  if (!host) return `VM "${vm.name}" has no host`;
  const driver = effectiveDriver(vm, host);
  const caps = host.driverCapabilities.find((c) => c.driver === driver);
  if (!caps) return `host ${host.name} did not report the capabilities of driver ${driver}`;
  if (!caps.capabilities.includes(capability)) return `driver ${driver} does not support ${capability}`;
  return undefined;
}

export type LifecycleDecision =
  | { kind: "refuse"; reason: string }
  /** Nothing to change: the VM is already where the operation takes it. */
  | { kind: "noop" }
  | { kind: "write"; desired: VmDesiredState; restartPending: boolean };

/**
 * What an operation does to a VM as it is now. Pause: a RUNNING VM (desired RUNNING) becomes
 * desired PAUSED; already desired PAUSED is a no-op. Resume: a VM desired PAUSED becomes
 * desired RUNNING. Restart: a RUNNING or PAUSED VM becomes desired STOPPED with
 * restart_pending (the coordinator sets it running once its host reports it STOPPED).
 */
export function decide(op: LifecycleOp, vm: Vm): LifecycleDecision {
  const phase = vm.status?.phase ?? VmPhase.VM_PHASE_UNSPECIFIED;
  const desired = vm.desiredState;
  const name = `VM "${vm.name}"`;
  if (desired === VmDesiredState.VM_DESIRED_STATE_DELETED) return { kind: "refuse", reason: `${name} is being destroyed` };
  if (vm.status?.restartPending) return { kind: "refuse", reason: `${name} is restarting` };
  switch (op) {
    case "pause":
      if (desired === VmDesiredState.VM_DESIRED_STATE_PAUSED) return { kind: "noop" };
      if (phase !== VmPhase.VM_PHASE_RUNNING || desired !== VmDesiredState.VM_DESIRED_STATE_RUNNING) {
        return { kind: "refuse", reason: `${name} is not running (${phaseName(phase)}); only a running VM can be paused` };
      }
      return { kind: "write", desired: VmDesiredState.VM_DESIRED_STATE_PAUSED, restartPending: false };
    case "resume":
      if (desired !== VmDesiredState.VM_DESIRED_STATE_PAUSED) {
        return { kind: "refuse", reason: `${name} is not paused (${phaseName(phase)}); only a paused VM can be resumed` };
      }
      return { kind: "write", desired: VmDesiredState.VM_DESIRED_STATE_RUNNING, restartPending: false };
    case "restart":
      if (phase !== VmPhase.VM_PHASE_RUNNING && phase !== VmPhase.VM_PHASE_PAUSED) {
        return { kind: "refuse", reason: `${name} is not running (${phaseName(phase)}); start it instead` };
      }
      if (desired !== VmDesiredState.VM_DESIRED_STATE_RUNNING && desired !== VmDesiredState.VM_DESIRED_STATE_PAUSED) {
        return { kind: "refuse", reason: `${name} is being stopped` };
      }
      return { kind: "write", desired: VmDesiredState.VM_DESIRED_STATE_STOPPED, restartPending: true };
  }
}

/**
 * A status report completes a pending restart: once the host reports the VM STOPPED, it is
 * desired RUNNING again. Pure: the next desired state and flag, or undefined for no change.
 */
export function afterReport(vm: Vm, reported: VmPhase): { desired: VmDesiredState; restartPending: false } | undefined {
  if (!vm.status?.restartPending) return undefined;
  if (vm.desiredState !== VmDesiredState.VM_DESIRED_STATE_STOPPED || reported !== VmPhase.VM_PHASE_STOPPED) return undefined;
  return { desired: VmDesiredState.VM_DESIRED_STATE_RUNNING, restartPending: false };
}
