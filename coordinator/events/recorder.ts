// Turns what the informers see into events: VM lifecycle (created, placed,
// unschedulable, phase changes, deleted) and host membership (joined, left,
// unreachable, ready). The mapping is pure (vmEvents/hostEvents/aliveEvents);
// the recorder only subscribes and writes. Audit entries that operators must
// also be told about (auth.failure, security.*) are followed with a watch on
// audit/, so they become events however they were written (AuditLog.write or
// an auditPut inside another transaction) — with audit logging on.
//
// Only the leader follows (start/stop on election): every replica sees the
// same informer changes and audit entries, and three replicas each writing
// them made every event appear three times. Events of a failover's gap (the
// seconds without a leader) are not recorded; the audit log is the complete
// record. record() (an event only this replica knows of, e.g. from an agent
// session it holds) writes on any replica. The log group-commits the writes
// (EventLog.record).
import type { Logger } from "pino";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import type { Store, Watcher } from "../store/store.js";
import { dec } from "../state/codec.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import type { AuditInput } from "../audit-log.js";
import type { Change } from "../state/informer.js";
import type { ClusterState } from "../state/cluster.js";
import { keys, lastSegment } from "../state/keys.js";
import type { EventInput, EventLog } from "./event-log.js";

export function phaseName(p: VmPhase | undefined): string {
  const n = VmPhase[p ?? VmPhase.VM_PHASE_UNSPECIFIED] ?? "VM_PHASE_UNKNOWN";
  return String(n).replace(/^VM_PHASE_/, "").toLowerCase();
}

function vmRef(vm: Vm): Pick<EventInput, "vmId" | "vmName" | "owner" | "hostId" | "hostName"> {
  return { vmId: vm.id, vmName: vm.name, owner: vm.owner, hostId: vm.status?.hostId ?? "", hostName: vm.status?.hostName ?? "" };
}

function scheduled(vm: Vm): EventInput {
  return { kind: "vm.scheduled", ...vmRef(vm), message: `vm ${vm.name} placed on ${vm.status?.hostName || vm.status?.hostId}` };
}

/** Pure: the events one change of vms/ stands for. */
export function vmEvents(c: Change<Vm>): EventInput[] {
  if (c.type === "delete") {
    if (!c.prev) return [];
    const vm = c.prev.value;
    return [{ kind: "vm.deleted", ...vmRef(vm), message: `vm ${vm.name} deleted` }];
  }
  const vm = c.entry.value;
  if (!c.prev) {
    const created: EventInput = { kind: "vm.created", ...vmRef(vm), message: `vm ${vm.name} created`, attributes: { phase: phaseName(vm.status?.phase) } };
    // The leader places a VM in its create transaction when it can.
    return vm.status?.hostId ? [created, scheduled(vm)] : [created];
  }
  const before = c.prev.value;
  const out: EventInput[] = [];
  const was = before.status?.phase;
  const now = vm.status?.phase;
  if (!before.status?.hostId && vm.status?.hostId) {
    out.push(scheduled(vm));
  } else if (!vm.status?.hostId && vm.status?.reason && vm.status.reason !== before.status?.reason) {
    out.push({ kind: "vm.unschedulable", severity: "warning", ...vmRef(vm), message: `vm ${vm.name} cannot be placed: ${vm.status.reason}`, attributes: { reason: vm.status.reason } });
  }
  if (was !== now) {
    const reason = vm.status?.reason ?? "";
    const failed = now === VmPhase.VM_PHASE_FAILED;
    out.push({
      kind: "vm.phase",
      severity: failed ? "warning" : "info",
      ...vmRef(vm),
      message: `vm ${vm.name}: ${phaseName(was)} -> ${phaseName(now)}${reason ? ` (${reason})` : ""}`,
      attributes: { from: phaseName(was), to: phaseName(now), ...(reason ? { reason } : {}) },
    });
  }
  return out;
}

/** Pure: the events one change of hosts/ stands for. */
export function hostEvents(c: Change<Host>): EventInput[] {
  if (c.type === "delete") {
    if (!c.prev) return [];
    const h = c.prev.value;
    return [{ kind: "host.left", hostId: h.id, hostName: h.name, message: `host ${h.name} left the cluster` }];
  }
  const h = c.entry.value;
  const out: EventInput[] = [];
  if (!c.prev) out.push({ kind: "host.joined", hostId: h.id, hostName: h.name, message: `host ${h.name} joined (${h.address || "no address"})`, attributes: { address: h.address } });
  else if (c.prev.value.cordoned !== h.cordoned) {
    out.push({ kind: h.cordoned ? "host.cordoned" : "host.uncordoned", hostId: h.id, hostName: h.name, message: `host ${h.name} ${h.cordoned ? "cordoned" : "uncordoned"}` });
  }
  return out;
}

/** Pure: the events one change of alive/ (the agent's lease) stands for. */
export function aliveEvents(c: Change<Uint8Array>, hostName: (id: string) => string | undefined): EventInput[] {
  const id = lastSegment(c.type === "put" ? c.entry.key : c.key);
  const name = hostName(id) ?? "";
  if (c.type === "delete") {
    return [{ kind: "host.unreachable", severity: "warning", hostId: id, hostName: name, message: `host ${name || id} unreachable: its agent's lease ended` }];
  }
  return c.prev ? [] : [{ kind: "host.ready", hostId: id, hostName: name, message: `host ${name || id} connected` }];
}

/** Pure: the event an audit entry also stands for, if any (failed logins, security reports). */
export function auditEvent(e: AuditInput, vmById: (id: string) => Vm | undefined, hostByName: (name: string) => Host | undefined): EventInput | undefined {
  if (e.event !== "auth.failure" && !e.event.startsWith("security.")) return undefined;
  const vm = e.vm ? vmById(e.vm) : undefined;
  const host = e.host ? hostByName(e.host) : undefined;
  return {
    kind: e.event,
    severity: "warning",
    vmId: vm?.id ?? e.vm,
    vmName: vm?.name ?? "",
    // Only an event tied to a known VM belongs to a user; the rest are the admins'.
    owner: vm?.owner ?? "",
    hostId: host?.id ?? "",
    hostName: host?.name ?? e.host,
    message: e.detail,
    attributes: { ...(e.user ? { user: e.user } : {}), ...(e.peer ? { peer: e.peer } : {}) },
  };
}

export class EventRecorder {
  private readonly offs: (() => void)[] = [];
  private auditWatch?: Watcher;
  private stopped = false;
  /** Bumped by every start and stop: callbacks of an older following do nothing. */
  private gen = 0;

  constructor(private readonly d: { log: EventLog; cluster: ClusterState; logger: Logger; store: Store }) {}

  /** Follows the informers and the audit log (the leader does). Again after stop(): follows again. */
  async start(): Promise<void> {
    this.stopped = false;
    const gen = ++this.gen;
    await this.followAudit(gen);
    if (this.stopped || gen !== this.gen) return;
    const c = this.d.cluster;
    const name = (id: string) => c.hosts.get(keys.host(id))?.value.name;
    this.offs.push(
      c.vms.onChange((ch) => this.write(vmEvents(ch))),
      c.hosts.onChange((ch) => this.write(hostEvents(ch))),
      c.alive.onChange((ch) => this.write(aliveEvents(ch, name))),
    );
  }

  /** Stops following (deposed, shutdown) and writes what is still pending. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.gen++;
    this.offs.splice(0).forEach((o) => o());
    const w = this.auditWatch;
    this.auditWatch = undefined;
    await w?.cancel().catch(() => undefined);
    // Events still waiting for their group write go out before the store closes (bounded: etcd may be down).
    let t: NodeJS.Timeout | undefined;
    await Promise.race([this.d.log.flush().catch(() => undefined), new Promise((r) => (t = setTimeout(r, 2000)))]);
    clearTimeout(t);
  }

  /** Watches audit/ from now on; after a break (e.g. compaction) it resumes from the current revision. */
  private async followAudit(gen = this.gen): Promise<void> {
    if (this.stopped || gen !== this.gen) return;
    const rev = await this.d.store.revision();
    const w = await this.d.store.watch(keys.auditPrefix, {
      fromRevision: rev + 1,
      onEvents: (evs) => {
        if (gen !== this.gen) return;
        for (const e of evs) if (e.type === "put") this.fromAudit(dec(AuditEvent, e.kv.value));
      },
      onError: (err) => {
        if (this.stopped || gen !== this.gen) return;
        this.d.logger.warn({ err }, "audit watch broke; following again from now");
        setTimeout(() => void this.followAudit(gen).catch((e: unknown) => this.d.logger.warn({ err: e }, "following audit failed")), 1000).unref();
      },
    });
    // Stopped (or stopped and started again) while the watch was being set up: this one is stale.
    if (this.stopped || gen !== this.gen) {
      await w.cancel().catch(() => undefined);
      return;
    }
    this.auditWatch = w;
  }

  /** Records the event an audit entry stands for (auth.failure, security.<kind>); others are ignored. */
  fromAudit(e: AuditInput): void {
    const c = this.d.cluster;
    const ev = auditEvent(e, (id) => c.vmEntry(id)?.value, (n) => c.hostByName(n));
    if (ev) this.write([ev]);
  }

  /** For callers with their own event (the agent security path): never throws, logs failures. */
  record(ev: EventInput): void {
    this.write([ev]);
  }

  private write(evs: EventInput[]): void {
    for (const ev of evs) {
      this.d.log.record(ev).catch((err: unknown) => this.d.logger.warn({ err, kind: ev.kind }, "recording event failed"));
    }
  }
}
