// The agent's reconciler decision: what to do so that what runs matches what is desired.
// Pure: no I/O, no clock. The loop (loop.ts) observes, calls plan, applies, and repeats
// until the plan is empty. One step per VM per round keeps each action simple and lets
// the next observation verify it (create, then start once the VM is seen stopped).
//
// Drivers: a VM is created by the driver its spec names ("" = the host's default, the first
// enabled one); every later step goes to the driver that has it, so a VM's driver never
// changes under it. A driver this host does not run is a failure, not an action.
//
// Failures are terminal for the desired state they happened under: a VM that failed (an
// action threw, or its process died) has what is left of it on the host destroyed and is
// reported FAILED with the reason, and is not tried again until its desired state changes.
// The coordinator releases its place on the host when it hears FAILED.
//
// Pause is a desired state like the others: a VM desired PAUSED is paused when seen running
// (and started first when seen stopped); one desired RUNNING is resumed when seen paused. A
// VM seen paused after an agent restart is left paused when that is what is desired. A
// driver without the pause capability gets no pause action: the VM is reported RUNNING with
// the reason (the coordinator refuses such a pause up front, so this is a safety net).
import type { VmStatusReport } from "../../gen/noid/v1/agent.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import type { VmCreateSpec, VmRuntime } from "../drivers/driver.js";
import type { DesiredVm, IncomingMigration } from "./types.js";

export type DestroyReason = "deleted" | "orphan" | "failed";

export type Action =
  | { kind: "create"; vmId: string; driver: string; spec: VmCreateSpec }
  | { kind: "start"; vmId: string; driver: string }
  /** Instead of start, for a VM that moves here: run it from the migration's transferred state. */
  | { kind: "restore"; vmId: string; driver: string; incoming: IncomingMigration }
  | { kind: "stop"; vmId: string; driver: string }
  | { kind: "pause"; vmId: string; driver: string }
  | { kind: "resume"; vmId: string; driver: string }
  /** `observedReason` says why a failed VM's remains are removed. */
  | { kind: "destroy"; vmId: string; driver: string; reason: DestroyReason; observedReason?: string }
  | { kind: "report"; vmId: string; status: VmStatusReport };

export interface PlanContext {
  /** The drivers this host runs, the default first. Absent: any driver name is accepted. */
  drivers?: readonly string[];
  /** VMs given up on under their current desired state, with the reason (see the header). */
  failed?: ReadonlyMap<string, string>;
  /** Whether a driver can pause (absent: every driver can). */
  canPause?: (driver: string) => boolean;
}

/** Why a VM cannot be created here because of its driver, or undefined when it can. */
export function driverProblem(name: string, drivers: readonly string[] | undefined): string | undefined {
  if (!drivers || drivers.includes(name)) return undefined;
  return `driver "${name}" is not enabled on this host (enabled: ${drivers.join(", ")})`;
}

/** Order within one round: free resources first, report last. */
const ORDER: Record<Action["kind"], number> = { destroy: 0, stop: 1, pause: 1, create: 2, start: 3, resume: 3, restore: 3, report: 4 };

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
function step(d: DesiredVm, o: VmRuntime | undefined, ctx: PlanContext): Action | VmStatusReport {
  const id = d.id;
  if (d.state === "deleted") {
    if (o) return { kind: "destroy", vmId: id, driver: o.driver, reason: "deleted" };
    return status(id, VmPhase.VM_PHASE_STOPPED, undefined, { destroyed: true });
  }
  const failed = ctx.failed?.get(id);
  if (failed !== undefined) {
    if (o) return { kind: "destroy", vmId: id, driver: o.driver, reason: "failed", observedReason: failed };
    return status(id, VmPhase.VM_PHASE_FAILED, undefined, { reason: failed, ip: d.spec.net.ip, mac: d.spec.net.mac });
  }
  if (!o) {
    const driver = d.driver || ctx.drivers?.[0] || "";
    const problem = driverProblem(driver, ctx.drivers);
    if (problem) return status(id, VmPhase.VM_PHASE_FAILED, undefined, { reason: problem, ip: d.spec.net.ip, mac: d.spec.net.mac });
    return { kind: "create", vmId: id, driver, spec: d.spec };
  }
  if (o.state === "failed") return { kind: "destroy", vmId: id, driver: o.driver, reason: "failed", observedReason: o.reason };
  if (d.state === "running") {
    if (o.state === "running") return status(id, VmPhase.VM_PHASE_RUNNING, o);
    if (d.incoming) return { kind: "restore", vmId: id, driver: o.driver, incoming: d.incoming };
    if (o.state === "paused") return { kind: "resume", vmId: id, driver: o.driver };
    return { kind: "start", vmId: id, driver: o.driver };
  }
  if (d.state === "paused") {
    if (o.state === "paused") return status(id, VmPhase.VM_PHASE_PAUSED, o);
    if (o.state === "stopped") return { kind: "start", vmId: id, driver: o.driver };
    if (ctx.canPause && !ctx.canPause(o.driver)) {
      return status(id, VmPhase.VM_PHASE_RUNNING, o, { reason: `driver ${o.driver} does not support pause` });
    }
    return { kind: "pause", vmId: id, driver: o.driver };
  }
  return o.state === "running" || o.state === "paused" ? { kind: "stop", vmId: id, driver: o.driver } : status(id, VmPhase.VM_PHASE_STOPPED, o);
}

/**
 * @param reported the last status sent per VM; a VM at rest is reported only when its
 *   status differs, so that the plan becomes empty once everything is done and said.
 */
export function plan(
  desired: readonly DesiredVm[],
  observed: readonly VmRuntime[],
  reported: ReadonlyMap<string, VmStatusReport> = new Map(),
  ctx: PlanContext = {},
): Action[] {
  const want = new Map(desired.map((d) => [d.id, d]));
  const have = new Map(observed.map((o) => [o.id, o]));
  const actions: Action[] = [];
  for (const d of want.values()) {
    const next = step(d, have.get(d.id), ctx);
    if ("kind" in next) actions.push(next);
    else if (!sameStatus(reported.get(d.id), next)) actions.push({ kind: "report", vmId: d.id, status: next });
  }
  for (const o of have.values()) {
    if (!want.has(o.id)) actions.push({ kind: "destroy", vmId: o.id, driver: o.driver, reason: "orphan" });
  }
  return actions.sort((a, b) => ORDER[a.kind] - ORDER[b.kind] || a.vmId.localeCompare(b.vmId));
}
