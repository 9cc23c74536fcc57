// VmService: create, get, list, destroy, start, stop, watch, pause, resume, restart.
import {
  VmDesiredState,
  VmEventType,
  type VmServiceServer,
  type Vm,
  type CreateVmRequest,
  type CreateVmResponse,
  type WatchVmsResponse,
} from "../../gen/noid/v1/vm.js";
import { NoidError, denied, exhausted, invalid, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import type { Action, Principal } from "../auth/authorize.js";
import { allow, ownerFor, resolveVm } from "./resolve-vm.js";
import { serverStream, unary, type CallContext, type HandlerDeps } from "../grpc/handler.js";
import type { ClusterState } from "../state/cluster.js";
import type { VmRepo } from "../state/vm-repo.js";
import { checkVmRef, normalizeVmSpec } from "../validate.js";
import type { Limits } from "../limits.js";
import { anyHostFits, filterHosts, unplacedReason } from "../scheduler/index.js";
import { requestOf } from "../controllers/placement.js";
import { Role } from "../../gen/noid/v1/auth.js";
import { missingCapability } from "../lifecycle/lifecycle.js";

export interface VmServiceDeps extends HandlerDeps {
  repo: VmRepo;
  cluster: ClusterState;
  limits: () => Limits;
  /** The owner's SSH public keys (authorized_keys lines), snapshotted into each VM it creates. */
  sshKeysOf?: (user: string) => Promise<string[]>;
}

export function vmService(d: VmServiceDeps): VmServiceServer {
  const resolve = (ref: { name: string; id: string; owner: string }, ctx: CallContext, action: Action) =>
    resolveVm(d.repo, ref, ctx.principal, action);

  /** Where CreateVm's "can any host take it" check found a host last (see anyHostFits). */
  const fitHint = { at: 0 };

  function visible(p: Principal, vm: Vm, owner: string): boolean {
    if (p.role !== Role.ROLE_ADMIN) return vm.owner === p.user;
    return owner === "" || vm.owner === owner;
  }

  return {
    createVm: unary(d, "CreateVm", async (req: CreateVmRequest, ctx): Promise<CreateVmResponse> => {
      allow(ctx.principal, "vm.create");
      const name = checkName("name", req.name);
      const spec = normalizeVmSpec(req.spec);
      if (spec.sshAuthorizedKeys.length > 0) {
        throw invalid("spec.ssh_authorized_keys", "is filled by the coordinator from the owner's SSH keys (noidctl ssh-key add); leave it empty");
      }
      if (spec.host !== "" && !d.cluster.hostByName(spec.host)) throw invalid("spec.host", `no host named "${spec.host}"`);
      spec.sshAuthorizedKeys = (await d.sshKeysOf?.(ctx.principal.user)) ?? [];
      const created = await d.repo.create(ctx.principal.user, name, spec, d.limits(), { peer: ctx.peer }, { signal: ctx.signal });
      // Read your writes: a list or get on this replica right after the create shows the VM
      // (they read the informer, which may be a watch event behind). Bounded: etcd may be slow.
      await d.cluster.vms.waitFor(created.modRevision, 2000).catch(() => undefined);
      // Placed in its create transaction (by the leader): a host took it.
      if (created.vm.status?.hostId) return { vm: created.vm };
      // The VM is kept either way; tell the caller now if nothing can take it.
      const hosts = d.cluster.hostViews();
      const ask = requestOf(created.vm);
      if (!anyHostFits(hosts, ask, fitHint)) {
        const why = unplacedReason(hosts, ask, filterHosts(hosts, ask).filtered);
        // The VM shows why before the caller hears of it (the leader's next placement pass
        // would write the same; a GetVm right after this answer must not show no reason).
        await d.repo.notePending(created, why).catch(() => undefined);
        throw exhausted(`${why}; VM "${name}" is kept PENDING and placed when capacity appears`);
      }
      return { vm: created.vm };
    }),

    getVm: unary(d, "GetVm", async (req, ctx) => ({ vm: await resolve(req, ctx, "vm.get") })),

    listVms: unary(d, "ListVms", async (req, ctx) => {
      allow(ctx.principal, "vm.list");
      const owner = req.owner ? ownerFor(ctx.principal, req.owner) : "";
      if (req.host) checkName("host", req.host);
      const vms = d.cluster.vms
        .values()
        .map((e) => e.value)
        .filter((vm) => visible(ctx.principal, vm, owner))
        .filter((vm) => !req.host || vm.status?.hostName === req.host)
        .sort((a, b) => (a.owner === b.owner ? a.name.localeCompare(b.name) : a.owner.localeCompare(b.owner)));
      return { vms };
    }),

    destroyVm: unary(d, "DestroyVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.destroy");
      const r = await d.repo.requestDestroy(vm.id, ctx.principal.user, ctx.peer);
      return { vm: r.vm };
    }),

    startVm: unary(d, "StartVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.start");
      return { vm: await d.repo.setDesired(vm.id, VmDesiredState.VM_DESIRED_STATE_RUNNING, ctx.principal.user, ctx.peer) };
    }),

    stopVm: unary(d, "StopVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.stop");
      return { vm: await d.repo.setDesired(vm.id, VmDesiredState.VM_DESIRED_STATE_STOPPED, ctx.principal.user, ctx.peer) };
    }),

    pauseVm: unary(d, "PauseVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.pause");
      const check = (v: Vm) => {
        const why = missingCapability(v, d.cluster.hostById(v.status?.hostId ?? ""), "pause");
        if (why) throw new NoidError("FAILED_PRECONDITION", `pausing VM "${v.name}": ${why}`);
      };
      return { vm: await d.repo.lifecycle(vm.id, "pause", ctx.principal.user, ctx.peer, check) };
    }),

    resumeVm: unary(d, "ResumeVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.resume");
      return { vm: await d.repo.lifecycle(vm.id, "resume", ctx.principal.user, ctx.peer) };
    }),

    restartVm: unary(d, "RestartVm", async (req, ctx) => {
      const vm = await resolve(req, ctx, "vm.restart");
      return { vm: await d.repo.lifecycle(vm.id, "restart", ctx.principal.user, ctx.peer) };
    }),

    watchVms: serverStream(d, "WatchVms", async (req, ctx, send) => {
      allow(ctx.principal, "vm.watch");
      const owner = req.owner ? ownerFor(ctx.principal, req.owner) : "";
      if (req.name) checkName("name", req.name);
      const wanted = (vm: Vm) => visible(ctx.principal, vm, owner) && (!req.name || vm.name === req.name);
      const queue: WatchVmsResponse[] = [];
      let wake: (() => void) | undefined;
      const push = (m: WatchVmsResponse) => {
        queue.push(m);
        wake?.();
      };
      const unsub = d.cluster.vms.onChange((ch) => {
        if (ch.type === "put" && wanted(ch.entry.value)) push({ type: VmEventType.VM_EVENT_TYPE_PUT, vm: ch.entry.value });
        else if (ch.type === "delete" && ch.prev && wanted(ch.prev.value)) push({ type: VmEventType.VM_EVENT_TYPE_DELETED, vm: ch.prev.value });
      });
      try {
        for (const e of d.cluster.vms.values()) {
          if (wanted(e.value)) send({ type: VmEventType.VM_EVENT_TYPE_SNAPSHOT, vm: e.value });
        }
        while (!ctx.signal.aborted) {
          while (queue.length > 0) send(queue.shift()!);
          await new Promise<void>((r) => {
            wake = r;
            ctx.signal.addEventListener("abort", () => r(), { once: true });
          });
          wake = undefined;
        }
      } finally {
        unsub();
      }
    }),
  };
}

