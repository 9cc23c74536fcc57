// The agent's reconciler decision: what to do so that what runs matches what is desired.
// Pure: no I/O, no clock. The loop (loop.ts) observes, calls plan, applies, and repeats
// until the plan is empty. One step per VM per round keeps each action simple and lets
// the next observation verify it (create, then start once the VM is seen stopped).
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { VmCreateSpec, VmRuntime } from "../drivers/driver.js";
import type { DesiredVm } from "./types.js";

export type DestroyReason = "deleted" | "orphan" | "failed";

export type Action =
  | { kind: "create"; vmId: string; spec: VmCreateSpec }
  | { kind: "start"; vmId: string }
  | { kind: "stop"; vmId: string }
  /** `observedReason` says why a failed VM is being replaced. */
  | { kind: "destroy"; vmId: string; reason: DestroyReason; observedReason?: string }
  | { kind: "report"; vmId: string; status: VmStatusReport };

/** Order within one round: free resources first, report last. */
const ORDER: Record<Action["kind"], number> = { destroy: 0, stop: 1, create: 2, start: 3, report: 4 };

function status(vmId: string, phase: VmPhase, o: VmRuntime | undefined, extra: Partial<VmStatusReport> = {}): VmStatusReport {
  return {
    vmId,
    phase,
    reason: o?.reason ?? "",
    ip: o?.spec.net.ip ?? "",
    mac: o?.spec.net.mac ?? "",
    destroyed: false,
    ...extra,
  };
}

export function sameStatus(a: VmStatusReport | undefined, b: VmStatusReport): boolean {
  return (
    a !== undefined &&
    a.phase === b.phase &&
    a.reason === b.reason &&
    a.ip === b.ip &&
    a.mac === b.mac &&
    a.destroyed === b.destroyed
  );
}

/** The one next step for a VM, or the status to report once it is where it should be. */
function step(d: DesiredVm, o: VmRuntime | undefined): Action | VmStatusReport {
  if (d.state === "deleted") {
    if (o) return { kind: "destroy", vmId: d.id, reason: "deleted" };
    return status(d.id, VmPhase.VM_PHASE_STOPPED, undefined, { destroyed: true });
  }
  if (!o) return { kind: "create", vmId: d.id, spec: d.spec };
  if (o.state === "failed") return { kind: "destroy", vmId: d.id, reason: "failed", observedReason: o.reason };
  if (d.state === "running") {
    return o.state === "running" ? status(d.id, VmPhase.VM_PHASE_RUNNING, o) : { kind: "start", vmId: d.id };
  }
  return o.state === "running" ? { kind: "stop", vmId: d.id } : status(d.id, VmPhase.VM_PHASE_STOPPED, o);
}

/**
 * @param reported the last status sent per VM; a VM at rest is reported only when its
 *   status differs, so that the plan becomes empty once everything is done and said.
 */
export function plan(
  desired: readonly DesiredVm[],
  observed: readonly VmRuntime[],
  reported: ReadonlyMap<string, VmStatusReport> = new Map(),
): Action[] {
  const want = new Map(desired.map((d) => [d.id, d]));
  const have = new Map(observed.map((o) => [o.id, o]));
  const actions: Action[] = [];
  for (const d of want.values()) {
    const next = step(d, have.get(d.id));
    if ("kind" in next) actions.push(next);
    else if (!sameStatus(reported.get(d.id), next)) actions.push({ kind: "report", vmId: d.id, status: next });
  }
  for (const o of have.values()) {
    if (!want.has(o.id)) actions.push({ kind: "destroy", vmId: o.id, reason: "orphan" });
  }
  return actions.sort((a, b) => ORDER[a.kind] - ORDER[b.kind] || a.vmId.localeCompare(b.vmId));
}
