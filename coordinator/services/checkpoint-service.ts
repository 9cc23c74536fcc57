// CheckpointService: save a running VM's state on its host, list the saved states, restore
// one in place or as a new VM (a clone, with its own name, MAC and address from IPAM).
//
// Records live in etcd under checkpoints/<vm id>/<name> and go with the VM (its remove
// transaction deletes them; the agent removes the files when it destroys the VM). Files stay
// on the host that took them: restore runs there. Keys travel with the request to the agent
// and are used there in memory only: never stored, logged or audited (the audit says
// "encrypted").
import { randomBytes } from "node:crypto";
import type { AuditEvent } from "../../gen/noid/v1/audit.js";
import {
  Checkpoint,
  type CheckpointServiceServer,
  type CreateCheckpointResponse,
  type ListCheckpointsResponse,
  type RestoreCheckpointResponse,
} from "../../gen/noid/v1/checkpoint.js";
import type { AgentCheckpointCommand, AgentCheckpointResult } from "../../gen/noid/v1/agent.js";
import { type Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import { type ErrorCode, NoidError, alreadyExists, invalid, notFound, precondition } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { unary, type CallContext, type HandlerDeps } from "../grpc/handler.js";
import type { SessionRegistry } from "../agents/registry.js";
import type { Store } from "../store/store.js";
import { keys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import type { VmRepo } from "../state/vm-repo.js";
import type { Limits } from "../limits.js";
import { allow, resolveVm } from "./resolve-vm.js";

export interface CheckpointServiceDeps extends HandlerDeps {
  repo: VmRepo;
  store: Store;
  sessions: SessionRegistry;
  limits: () => Limits;
  audit: (e: Omit<AuditEvent, "id" | "time">) => Promise<void>;
  clock: { now(): Date };
  /** How long a clone may take to be placed and prepared on the checkpoint's host (default 120 s). */
  cloneReadyMs?: number;
}

const phaseName = (vm: Vm): string => VmPhase[vm.status?.phase ?? 0]?.replace("VM_PHASE_", "") ?? "unknown";

/** Pure: a key is absent or exactly 32 bytes. */
export function checkKey(key: Uint8Array): void {
  if (key.length !== 0 && key.length !== 32) throw invalid("key", `must be 32 bytes (got ${key.length})`);
}

function agentError(r: AgentCheckpointResult, what: string): NoidError {
  const codes: ErrorCode[] = ["INVALID_ARGUMENT", "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "FAILED_PRECONDITION", "UNAVAILABLE", "DEADLINE_EXCEEDED"];
  const code = (codes as string[]).includes(r.errorCode) ? (r.errorCode as ErrorCode) : "INTERNAL";
  return new NoidError(code, `${what}: ${r.error}`);
}

export function checkpointService(d: CheckpointServiceDeps): CheckpointServiceServer {
  const opId = () => randomBytes(8).toString("hex");

  async function listOf(vmId: string): Promise<Checkpoint[]> {
    const r = await d.store.list(keys.checkpointsOf(vmId));
    return r.kvs.map((kv) => dec(Checkpoint, kv.value)).sort((a, b) => (a.createdAt?.getTime() ?? 0) - (b.createdAt?.getTime() ?? 0));
  }

  async function find(vm: Vm, name: string): Promise<Checkpoint> {
    checkName("name", name);
    const kv = await d.store.get(keys.checkpoint(vm.id, name));
    if (!kv) throw notFound(`checkpoint "${name}" of VM "${vm.name}"`);
    return dec(Checkpoint, kv.value);
  }

  function channelTo(vm: Vm, hostId: string, hostName: string) {
    const ch = d.sessions.get(hostId);
    if (!ch) throw new NoidError("UNAVAILABLE", `host ${hostName} of VM "${vm.name}" is not connected`);
    return ch;
  }

  async function audit(ctx: CallContext, event: string, vm: string, host: string, success: boolean, detail: string): Promise<void> {
    await d.audit({ event, user: ctx.principal.user, vm, host, success, detail, peer: ctx.peer });
  }

  /** Waits until the clone is on `hostId` and prepared there (STOPPED); FAILED or elsewhere ends it. */
  async function cloneReady(id: string, hostId: string, signal: AbortSignal): Promise<Vm> {
    const end = Date.now() + (d.cloneReadyMs ?? 120_000);
    while (Date.now() < end && !signal.aborted) {
      const vm = (await d.repo.get(id))?.vm;
      if (!vm) throw precondition("the clone was destroyed while it was being prepared");
      const st = vm.status;
      if (st?.phase === VmPhase.VM_PHASE_FAILED) throw precondition(`the clone failed on its host: ${st.reason}`);
      if (st?.hostId && st.hostId !== hostId) throw precondition(`the clone was placed on ${st.hostName}, not on the checkpoint's host`);
      if (st?.hostId === hostId && st.phase === VmPhase.VM_PHASE_STOPPED) return vm;
      await new Promise((r) => setTimeout(r, 250));
    }
    throw new NoidError("DEADLINE_EXCEEDED", "the clone was not prepared on the checkpoint's host in time (is the host full or cordoned?)");
  }

  return {
    createCheckpoint: unary(d, "CreateCheckpoint", async (req, ctx): Promise<CreateCheckpointResponse> => {
      const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "vm.checkpoint");
      const name = checkName("name", req.name);
      checkKey(req.key);
      if (await d.store.get(keys.checkpoint(vm.id, name))) throw alreadyExists(`checkpoint "${name}" of VM "${vm.name}"`);
      const st = vm.status!;
      if (st.phase !== VmPhase.VM_PHASE_RUNNING) throw precondition(`VM "${vm.name}" is not running (${phaseName(vm)})`);
      const ch = channelTo(vm, st.hostId, st.hostName);
      const id = randomBytes(8).toString("hex");
      const encrypted = req.key.length > 0;
      const cmd: AgentCheckpointCommand = { opId: opId(), vmId: vm.id, checkpointId: id, restore: false, key: req.key, sha256: "", savedMac: "", savedIp: "", sourceVmId: "" };
      const r = await ch.checkpoint(cmd);
      if (r.error) {
        await audit(ctx, "vm.checkpoint", vm.name, st.hostName, false, `${name}: ${r.error}`.slice(0, 512));
        throw agentError(r, `checkpointing VM "${vm.name}"`);
      }
      const ckpt: Checkpoint = {
        id,
        name,
        vmId: vm.id,
        vmName: vm.name,
        owner: vm.owner,
        hostId: st.hostId,
        hostName: st.hostName,
        driver: r.driver,
        sizeBytes: r.sizeBytes,
        sha256: r.sha256,
        encrypted,
        createdAt: d.clock.now(),
        spec: vm.spec,
        mac: st.mac,
        ip: st.ip,
      };
      // The VM must still exist (its remove deletes its checkpoints) and the name be free.
      const ok = await d.store.txn(
        [
          { key: keys.checkpoint(vm.id, name), target: "create", op: "==", value: 0 },
          { key: keys.vm(vm.id), target: "create", op: ">", value: 0 },
        ],
        [{ type: "put", key: keys.checkpoint(vm.id, name), value: enc(Checkpoint, ckpt) }],
      );
      if (!ok.succeeded) throw alreadyExists(`checkpoint "${name}" of VM "${vm.name}" (taken meanwhile, or the VM is gone)`);
      await audit(ctx, "vm.checkpoint", vm.name, st.hostName, true, `${name} (${r.driver}, ${r.sizeBytes} bytes${encrypted ? ", encrypted" : ""})`);
      return { checkpoint: ckpt };
    }),

    listCheckpoints: unary(d, "ListCheckpoints", async (req, ctx): Promise<ListCheckpointsResponse> => {
      const vm = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "vm.checkpoint.list");
      return { checkpoints: await listOf(vm.id) };
    }),

    restoreCheckpoint: unary(d, "RestoreCheckpoint", async (req, ctx): Promise<RestoreCheckpointResponse> => {
      const src = await resolveVm(d.repo, { name: req.vm, id: "", owner: req.owner }, ctx.principal, "vm.restore");
      checkKey(req.key);
      const ckpt = await find(src, req.name);
      if (ckpt.encrypted && req.key.length === 0) throw precondition(`checkpoint "${ckpt.name}" is encrypted: give its key (--key-file)`);
      const base = { restore: true, key: req.key, checkpointId: ckpt.id, sha256: ckpt.sha256, savedMac: ckpt.mac, savedIp: ckpt.ip.split("/")[0] ?? "", sourceVmId: ckpt.vmId };

      if (req.asName) {
        allow(ctx.principal, "vm.create");
        const name = checkName("as_name", req.asName);
        if (!d.sessions.get(ckpt.hostId)) throw new NoidError("UNAVAILABLE", `host ${ckpt.hostName} holding checkpoint "${ckpt.name}" is not connected`);
        // The clone: the checkpoint's spec on the checkpoint's host, prepared but not booted;
        // its own address and MAC come from IPAM in its create transaction.
        const spec = { ...(ckpt.spec ?? src.spec!), host: ckpt.hostName, driver: ckpt.driver };
        const created = await d.repo.create(src.owner, name, spec, d.limits(), { peer: ctx.peer }, {
          desired: VmDesiredState.VM_DESIRED_STATE_STOPPED,
          detail: `clone of ${src.name} from checkpoint ${ckpt.name}`,
        });
        try {
          const clone = await cloneReady(created.vm.id, ckpt.hostId, ctx.signal);
          const r = await channelTo(clone, ckpt.hostId, ckpt.hostName).checkpoint({ ...base, opId: opId(), vmId: clone.id });
          if (r.error) throw agentError(r, `restoring checkpoint "${ckpt.name}" as VM "${name}"`);
          const vm = await d.repo.setDesired(clone.id, VmDesiredState.VM_DESIRED_STATE_RUNNING, ctx.principal.user, ctx.peer);
          await audit(ctx, "vm.restore", name, ckpt.hostName, true, `clone of ${src.name} from checkpoint ${ckpt.name}, ${clone.status?.ip} ${clone.status?.mac}`);
          return { vm };
        } catch (e) {
          await audit(ctx, "vm.restore", name, ckpt.hostName, false, `clone of ${src.name} from checkpoint ${ckpt.name}: ${e instanceof Error ? e.message : String(e)}`.slice(0, 512));
          // Nothing half-made is left: the clone goes again.
          await d.repo.requestDestroy(created.vm.id, ctx.principal.user, ctx.peer).catch(() => undefined);
          throw e;
        }
      }

      const st = src.status!;
      if (st.hostId !== ckpt.hostId) {
        throw precondition(`checkpoint "${ckpt.name}" is on host ${ckpt.hostName} but VM "${src.name}" is on ${st.hostName || "no host"}; restore it as a new VM there (--as)`);
      }
      if (st.phase === VmPhase.VM_PHASE_RUNNING && !req.force) {
        throw precondition(`VM "${src.name}" is running: restoring replaces its current state; pass --force`);
      }
      if (st.phase !== VmPhase.VM_PHASE_RUNNING && st.phase !== VmPhase.VM_PHASE_STOPPED) {
        throw precondition(`VM "${src.name}" is ${phaseName(src)}; it must be running or stopped`);
      }
      if (src.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) throw precondition(`VM "${src.name}" is being destroyed`);
      const r = await channelTo(src, st.hostId, st.hostName).checkpoint({ ...base, opId: opId(), vmId: src.id });
      if (r.error) {
        await audit(ctx, "vm.restore", src.name, st.hostName, false, `${ckpt.name}: ${r.error}`.slice(0, 512));
        throw agentError(r, `restoring VM "${src.name}" from checkpoint "${ckpt.name}"`);
      }
      const vm = await d.repo.setDesired(src.id, VmDesiredState.VM_DESIRED_STATE_RUNNING, ctx.principal.user, ctx.peer);
      await audit(ctx, "vm.restore", src.name, st.hostName, true, `in place from checkpoint ${ckpt.name}`);
      return { vm };
    }),
  };
}
