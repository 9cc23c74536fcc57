// HostService: operators see and steer hosts.
import type { HostServiceServer } from "../../gen/noid/v1/host.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { NoidError, denied, notFound, precondition } from "../../common/errors.js";
import { certFingerprint } from "../../common/x509.js";
import type { ClusterCa } from "../pki/ca.js";
import type { HostIdentities } from "../pki/host-identity.js";
import type { HostSessions } from "./agent-service.js";
import type { HostUsageStore } from "../agents/usage-store.js";
import { Role } from "../../gen/noid/v1/auth.js";
import { checkName } from "../../common/names.js";
import { authorize, type Action, type Principal } from "../auth/authorize.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";
import type { ClusterState } from "../state/cluster.js";
import type { HostRepo } from "../state/host-repo.js";
import type { Store } from "../store/store.js";
import { keys } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { releaseAlloc, unchanged, type Clock } from "../state/vm-repo.js";

export interface HostServiceDeps extends HandlerDeps {
  hosts: HostRepo;
  cluster: ClusterState;
  store: Store;
  clock: Clock;
  audit: (e: Omit<AuditEvent, "id" | "time">) => Promise<void>;
  /** Absent when the coordinator runs plaintext (--insecure). */
  pki?: { ca: ClusterCa; ids: HostIdentities };
  hostSessions: HostSessions;
  /** The usage counters agents sent to this coordinator (GetHost shows them to admins). */
  usage?: HostUsageStore;
}

function allow(p: Principal, action: Action): void {
  const v = authorize(p, action);
  if (!v.allowed) throw denied(v.reason);
}

export function hostService(d: HostServiceDeps): HostServiceServer {
  const find = (name: string) => {
    checkName("name", name);
    const h = d.cluster.hostByName(name);
    if (!h) throw notFound(`host "${name}"`);
    return h;
  };

  /** Sends a VM that its host has not started back to the scheduler. */
  async function unassign(vmId: string, hostId: string): Promise<boolean> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const [vmKv, allocKv] = await Promise.all([d.store.get(keys.vm(vmId)), d.store.get(keys.alloc(hostId))]);
      if (!vmKv) return false;
      const vm = dec(Vm, vmKv.value);
      if (vm.status?.hostId !== hostId || vm.status.phase !== VmPhase.VM_PHASE_PENDING) return false;
      const next: Vm = { ...vm, status: { ...vm.status, hostId: "", hostName: "", reason: "rescheduled: host drained", updatedAt: d.clock.now() } };
      const ops = [
        { type: "put" as const, key: keys.vm(vmId), value: enc(Vm, next) },
        { type: "delete" as const, key: keys.assign(hostId, vmId) },
        ...(allocKv ? [{ type: "put" as const, key: keys.alloc(hostId), value: enc(AllocationRecord, releaseAlloc(dec(AllocationRecord, allocKv.value), vm)) }] : []),
      ];
      const r = await d.store.txn([unchanged(keys.vm(vmId), vmKv), unchanged(keys.alloc(hostId), allocKv)], ops);
      if (r.succeeded) return true;
    }
    return false;
  }

  return {
    listHosts: unary(d, "ListHosts", async (_req, ctx) => {
      allow(ctx.principal, "host.list");
      return { hosts: d.cluster.listHosts() };
    }),
    getHost: unary(d, "GetHost", async (req, ctx) => {
      allow(ctx.principal, "host.get");
      const host = find(req.name);
      // Usage names every tenant network on the host: admins only.
      const usage = ctx.principal.role === Role.ROLE_ADMIN ? d.usage?.get(host.id) : undefined;
      return { host, usage };
    }),
    cordonHost: unary(d, "CordonHost", async (req, ctx) => {
      allow(ctx.principal, "host.cordon");
      find(req.name);
      const h = await d.hosts.setCordoned(req.name, true);
      await d.audit({ event: "host.cordon", user: ctx.principal.user, vm: "", host: req.name, success: true, detail: "", peer: ctx.peer });
      return { host: d.cluster.hostForApi(h) };
    }),
    uncordonHost: unary(d, "UncordonHost", async (req, ctx) => {
      allow(ctx.principal, "host.uncordon");
      find(req.name);
      const h = await d.hosts.setCordoned(req.name, false);
      await d.audit({ event: "host.uncordon", user: ctx.principal.user, vm: "", host: req.name, success: true, detail: "", peer: ctx.peer });
      return { host: d.cluster.hostForApi(h) };
    }),
    drainHost: unary(d, "DrainHost", async (req, ctx) => {
      allow(ctx.principal, "host.drain");
      const host = find(req.name);
      const h = await d.hosts.setCordoned(req.name, true);
      const rescheduled: string[] = [];
      const remaining: string[] = [];
      for (const vm of d.cluster.vmsOnHost(host.id)) {
        if (await unassign(vm.id, host.id)) rescheduled.push(`${vm.owner}/${vm.name}`);
        else remaining.push(`${vm.owner}/${vm.name}`);
      }
      await d.audit({
        event: "host.drain",
        user: ctx.principal.user,
        vm: "",
        host: req.name,
        success: true,
        detail: `${rescheduled.length} rescheduled, ${remaining.length} remaining`,
        peer: ctx.peer,
      });
      return { host: d.cluster.hostForApi(h), rescheduled, remaining };
    }),
    createJoinToken: unary(d, "CreateJoinToken", async (req, ctx) => {
      allow(ctx.principal, "host.join_token");
      if (!d.pki) throw precondition("the coordinator runs plaintext (--insecure): agents cannot join with certificates");
      const { token, expiresAt } = await d.pki.ids.createJoinToken({ ttlSeconds: req.ttlSeconds, hostName: req.hostName, createdBy: ctx.principal.user });
      await d.audit({
        event: "host.join_token",
        user: ctx.principal.user,
        vm: "",
        host: req.hostName,
        success: true,
        detail: `join token valid until ${expiresAt.toISOString()}${req.hostName ? ` for host ${req.hostName}` : ""}`,
        peer: ctx.peer,
      });
      return { token, expiresAt, caFingerprint: certFingerprint(d.pki.ca.certPem) };
    }),
    removeHost: unary(d, "RemoveHost", async (req, ctx) => {
      allow(ctx.principal, "host.remove");
      const host = find(req.name);
      const vms = d.cluster.vmsOnHost(host.id);
      if (vms.length > 0) {
        throw precondition(`host "${req.name}" still has ${vms.length} VM(s) assigned; drain it and destroy or move them first`);
      }
      const revokedSerials = d.pki ? await d.pki.ids.revokeHost(req.name) : [];
      await d.hosts.remove(req.name);
      d.hostSessions.kick(req.name, new NoidError("UNAUTHENTICATED", `host "${req.name}" was removed`));
      await d.audit({
        event: "host.remove",
        user: ctx.principal.user,
        vm: "",
        host: req.name,
        success: true,
        detail: `${revokedSerials.length} certificate(s) revoked`,
        peer: ctx.peer,
      });
      d.usage?.forget(host.id);
      return { revokedSerials };
    }),
  };
}
