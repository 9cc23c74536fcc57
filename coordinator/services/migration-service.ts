// MigrationService: moves a running VM to another host with its MAC, address and state.
//
//   1. checks (pure, migrationProblem): nothing is changed for bad input
//   2. source agent: pause, save memory and disk into one file, serve it on the mesh to the
//      bearer of a one-time token this call made (agent/migration)
//   3. target agent: fetch it over the mesh with that token (resumable), check its SHA-256
//   4. the switch, one etcd transaction (VmRepo.moveTo): the VM's host, placement and both
//      hosts' allocations move; the mesh views follow (FDB entries move to the target)
//   5. the target's reconciler creates the VM and restores it from the file instead of
//      booting it, then announces its MAC; the source destroys its paused copy (tap,
//      overlay) as it is no longer assigned there
// A failure before the switch aborts: the source resumes the VM, both delete their files, the
// call fails with the reason. The VM's status names one host at any time. Audited as
// "vm.migrate" (the success in the switch's own transaction).
import { randomBytes } from "node:crypto";
import type { AuditEvent } from "../../gen/noid/v1/audit.js";
import type { AgentMigrationCommand, AgentMigrationResult, MigrateVmResponse, MigrationServiceServer } from "../../gen/noid/v1/migration.js";
import { MigrationStep } from "../../gen/noid/v1/migration.js";
import type { AllocationRecord } from "../../gen/noid/v1/records.js";
import { type Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { type ErrorCode, NoidError, exhausted, invalid, notFound, precondition } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { unary, type CallContext, type HandlerDeps } from "../grpc/handler.js";
import type { ExecChannel, SessionRegistry } from "../agents/registry.js";
import type { ClusterState } from "../state/cluster.js";
import type { VmRepo } from "../state/vm-repo.js";
import { rejectedBy } from "../scheduler/filter.js";
import type { HostView } from "../scheduler/types.js";
import { requestOf } from "../controllers/placement.js";
import { resolveVm } from "./resolve-vm.js";

export interface MigrationServiceDeps extends HandlerDeps {
  repo: VmRepo;
  cluster: Pick<ClusterState, "hostViews">;
  sessions: SessionRegistry;
  audit: (e: Omit<AuditEvent, "id" | "time">) => Promise<void>;
  clock: { now(): Date };
  /** How long the target may take to run the VM after the switch (default 180 s). */
  arriveMs?: number;
  /** Exposed ports and HTTP routes: they are recorded per host and do not follow a VM yet. */
  ports?: { heldBy(vmId: string): Promise<string[]> };
}

const phaseName = (p: VmPhase | undefined): string => VmPhase[p ?? 0]?.replace("VM_PHASE_", "") ?? "unknown";

/** The driver a VM runs with: its spec's, else its host's default (the host's first). */
export function effectiveDriver(vm: Vm, source: HostView | undefined): string {
  return vm.spec?.driver || source?.drivers[0] || "";
}

/**
 * Pure: why `vm` cannot move to the host named `toHost` (`target` is its view, undefined when
 * there is none), as the error the call fails with; undefined when it may.
 */
export function migrationProblem(vm: Vm, source: HostView | undefined, target: HostView | undefined, toHost: string): NoidError | undefined {
  const st = vm.status;
  if (!target) return notFound(`host "${toHost}"`);
  if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) return precondition(`VM "${vm.name}" is being destroyed`);
  if (st?.migrationId) return precondition(`VM "${vm.name}" is already moving to ${st.hostName}`);
  if (st?.phase !== VmPhase.VM_PHASE_RUNNING || !st.hostId) return precondition(`VM "${vm.name}" is not running (${phaseName(st?.phase)}): only a running VM is migrated`);
  if (target.id === st.hostId) return invalid("to_host", `VM "${vm.name}" already runs on ${target.name}`);
  if (!source) return precondition(`VM "${vm.name}"'s host is unknown`);
  const spec = vm.spec!;
  const driver = effectiveDriver(vm, source);
  // The scheduler's own filters, without the VM's pin (moving it is the point).
  const why = rejectedBy(target, { ...requestOf(vm), host: "", driver });
  switch (why) {
    case undefined:
      return undefined;
    case "not-ready":
      return precondition(`host ${target.name} is not ready`);
    case "cordoned":
      return precondition(`host ${target.name} is cordoned`);
    case "posture":
      return precondition(`host ${target.name} fails the required host posture`);
    case "driver":
      return precondition(`host ${target.name} does not run driver ${driver} (it runs ${target.drivers.join(", ")})`);
    case "labels":
      return precondition(`host ${target.name} does not match the VM's host selector`);
    case "pinned":
      return precondition(`host ${target.name} is not the VM's host`);
    case "vcpus":
    case "memory":
    case "disk":
      return exhausted(`host ${target.name} has no room for VM "${vm.name}" (${spec.vcpus} vCPU, ${spec.memoryMb} MB, ${spec.diskGb} GB; ${why} is short)`);
  }
}

/** Pure: the target's allocation as read has room for the VM (checked again in the switch). */
export function checkRoom(vm: Vm, target: HostView, alloc: AllocationRecord | undefined): void {
  const a = alloc?.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
  const s = vm.spec!;
  const c = target.capacity;
  if (a.vcpus + s.vcpus > c.vcpus || a.memoryMb + s.memoryMb > c.memoryMb || a.diskGb + s.diskGb > c.diskGb) {
    throw exhausted(`host ${target.name} has no room for VM "${vm.name}" any more`);
  }
}

function agentError(r: AgentMigrationResult, what: string): NoidError {
  const codes: ErrorCode[] = ["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"];
  const code = (codes as string[]).includes(r.errorCode) ? (r.errorCode as ErrorCode) : "INTERNAL";
  return new NoidError(code, `${what}: ${r.error}`);
}

export function migrationService(d: MigrationServiceDeps): MigrationServiceServer {
  const opId = () => randomBytes(8).toString("hex");
  /** VMs this coordinator is moving (the agents refuse a second export of one VM too). */
  const active = new Set<string>();

  const channel = (host: HostView, role: string): ExecChannel => {
    const ch = d.sessions.get(host.id);
    if (!ch) throw new NoidError("UNAVAILABLE", `${role} host ${host.name} is not connected`);
    return ch;
  };

  async function audit(ctx: CallContext, vm: string, host: string, detail: string): Promise<void> {
    await d.audit({ event: "vm.migrate", user: ctx.principal.user, vm, host, success: false, detail: detail.slice(0, 512), peer: ctx.peer });
  }

  /** After the switch: until the VM runs on the target, or the target failed it (`failed`). */
  async function arrival(vm: Vm, target: HostView, signal: AbortSignal): Promise<{ vm: Vm } | { failed: string }> {
    // Not bounded by the client's deadline: the source's paused copy waits for this answer.
    const end = Date.now() + (d.arriveMs ?? 180_000);
    let last: Vm | undefined;
    while (Date.now() < end) {
      last = (await d.repo.get(vm.id))?.vm;
      if (!last) throw precondition(`VM "${vm.name}" was destroyed while it moved`);
      const st = last.status!;
      if (st.phase === VmPhase.VM_PHASE_FAILED) return { failed: st.reason };
      if (st.hostId === target.id && st.phase === VmPhase.VM_PHASE_RUNNING) return { vm: last };
      if (st.hostId !== target.id) throw precondition(`VM "${vm.name}" left ${target.name} while it moved there`);
      await new Promise((r) => setTimeout(r, signal.aborted ? 1000 : 200));
    }
    throw new NoidError("DEADLINE_EXCEEDED", `VM "${vm.name}" is assigned to ${target.name} but does not run there yet (${phaseName(last?.status?.phase)})`);
  }

  return {
    migrateVm: unary(d, "MigrateVm", async (req, ctx): Promise<MigrateVmResponse> => {
      const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "vm.migrate");
      const toHost = checkName("to_host", req.toHost);
      const views = d.cluster.hostViews();
      const st = vm.status!;
      const source = views.find((h) => h.id === st.hostId);
      const target = views.find((h) => h.name === toHost);
      const problem = migrationProblem(vm, source, target, toHost);
      if (problem) throw problem;
      if (active.has(vm.id)) throw precondition(`VM "${vm.name}" is already being migrated`);
      const held = (await d.ports?.heldBy(vm.id)) ?? [];
      if (held.length > 0) {
        throw precondition(`VM "${vm.name}" has ${held.length} exposed port(s) or HTTP route(s) on ${source!.name}; unexpose them before migrating (they do not follow a VM to another host yet)`);
      }
      const src = channel(source!, "source");
      const dst = channel(target!, "target");
      active.add(vm.id);
      try {
        const migrationId = randomBytes(8).toString("hex");
        const token = randomBytes(32);
        const cmd = (step: MigrationStep, extra: Partial<AgentMigrationCommand> = {}): AgentMigrationCommand => ({
          opId: opId(),
          step,
          vmId: vm.id,
          migrationId,
          token,
          url: "",
          sizeBytes: 0,
          sha256: "",
          ...extra,
        });
        const t0 = Date.now();
        const ex = await src.migration(cmd(MigrationStep.MIGRATION_STEP_EXPORT));
        const tSaved = Date.now();
        let tFetched = tSaved;
        if (ex.error) {
          await audit(ctx, vm.name, target!.name, `from ${source!.name}: ${ex.error}; the VM runs on there`);
          throw agentError(ex, `saving VM "${vm.name}" on ${source!.name} for the migration (it runs on there)`);
        }
        let moved: Vm;
        try {
          if (!target!.drivers.includes(ex.driver)) throw precondition(`host ${target!.name} does not run driver ${ex.driver}`);
          const im = await dst.migration(cmd(MigrationStep.MIGRATION_STEP_IMPORT, { url: ex.url, sizeBytes: ex.sizeBytes, sha256: ex.sha256 }));
          if (im.error) throw agentError(im, `transferring VM "${vm.name}"'s state from ${source!.name} to ${target!.name}`);
          tFetched = Date.now();
          if (ctx.signal.aborted) throw new NoidError("UNAVAILABLE", "the call was cancelled before the switch");
          moved = await d.repo.moveTo(
            vm.id,
            source!,
            target!,
            { id: migrationId, sha256: ex.sha256, driver: ex.driver },
            (v, alloc) => checkRoom(v, target!, alloc),
            { actor: ctx.principal.user, peer: ctx.peer, detail: `from ${source!.name} (${ex.driver}, ${ex.sizeBytes} bytes, ${st.ip} ${st.mac})` },
          );
        } catch (e) {
          // Before the switch: the VM runs on at the source.
          await dst.migration(cmd(MigrationStep.MIGRATION_STEP_ABORT)).catch(() => undefined);
          const ab = await src.migration(cmd(MigrationStep.MIGRATION_STEP_ABORT));
          const why = e instanceof Error ? e.message : String(e);
          const where = ab.error ? `resuming it on ${source!.name} failed too: ${ab.error}` : `the VM runs on at ${source!.name}`;
          await audit(ctx, vm.name, target!.name, `from ${source!.name}: ${why}; ${where}`);
          if (e instanceof NoidError) throw new NoidError(e.code, `${e.message} (${where})`, { cause: e });
          throw e;
        }
        // The VM is the target's now. The source keeps its paused copy until the target runs
        // it: if the target fails it, the VM goes back and runs on at the source.
        const finish = () => src.migration(cmd(MigrationStep.MIGRATION_STEP_FINISH)).catch(() => undefined);
        try {
          const tSwitched = Date.now();
          const got = await arrival(moved, target!, ctx.signal);
          if ("failed" in got) {
            // The target drops what it fetched, if its restore did not get to use it.
            await dst.migration(cmd(MigrationStep.MIGRATION_STEP_ABORT)).catch(() => undefined);
            const back = await d.repo.returnTo(vm.id, source!, target!, { actor: ctx.principal.user, peer: ctx.peer }).catch((e: unknown) => e as Error);
            if (back instanceof Error) {
              await finish();
              throw precondition(`VM "${vm.name}" moved to ${target!.name} but failed there: ${got.failed} (${back.message})`);
            }
            const ab = await src.migration(cmd(MigrationStep.MIGRATION_STEP_ABORT));
            if (ab.error) throw new NoidError("INTERNAL", `VM "${vm.name}" failed on ${target!.name} (${got.failed}) and could not be resumed on ${source!.name}: ${ab.error}`);
            throw precondition(`VM "${vm.name}" failed on ${target!.name} after the move (${got.failed}); it runs on at ${source!.name}`);
          }
          await finish();
          const arrived = got.vm;
          const end = Date.now();
          d.logger.info(
            { vm: vm.id, from: source!.name, to: target!.name, bytes: ex.sizeBytes, saveMs: tSaved - t0, transferMs: tFetched - tSaved, switchMs: tSwitched - tFetched, restoreMs: end - tSwitched },
            "VM migrated",
          );
          return { vm: arrived, fromHost: source!.name, transferredBytes: ex.sizeBytes, pausedMs: end - t0 };
        } catch (e) {
          if (e instanceof NoidError && e.code === "DEADLINE_EXCEEDED") await finish();
          await audit(ctx, vm.name, target!.name, `after the switch from ${source!.name}: ${e instanceof Error ? e.message : String(e)}`);
          throw e;
        }
      } finally {
        active.delete(vm.id);
      }
    }),
  };
}
