// Small helpers over VM phases that integrators keep rewriting.
import { VmPhase, type Vm } from "../gen/noid/v1/vm.js";

/** Phases a VM does not leave without someone asking (or a host coming back). */
const SETTLED = new Set<VmPhase>([VmPhase.VM_PHASE_RUNNING, VmPhase.VM_PHASE_PAUSED, VmPhase.VM_PHASE_STOPPED, VmPhase.VM_PHASE_FAILED]);

export function phaseOf(vm: Vm): VmPhase {
  return vm.status?.phase ?? VmPhase.VM_PHASE_UNSPECIFIED;
}

/** True once the VM is RUNNING, PAUSED, STOPPED or FAILED: a good predicate for waitForVm. */
export function isSettled(vm: Vm): boolean {
  return SETTLED.has(phaseOf(vm));
}

/** "VM_PHASE_RUNNING" → "RUNNING". */
export function phaseName(phase: VmPhase): string {
  const name = VmPhase[phase] as string | undefined;
  return name === undefined ? "UNKNOWN" : name.replace(/^VM_PHASE_/, "");
}
