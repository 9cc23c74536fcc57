// The host-loss controller (leader only, writes fenced): a host whose agent's
// lease expired is marked unreachable (hosts/<id>.unreachable_since) and its
// VMs UNKNOWN: they stay assigned, nothing runs them anywhere else. VMs whose
// policy is "reschedule" are sent back to the scheduler once the host has been
// lost for their grace period; by then the host's agent, if it still runs, has
// stopped them itself (agent/reconcile/fence.ts), because it has not renewed
// its lease for that long either. Every write compares the host's liveness key
// (absent), so a host that comes back in the meantime wins the race.
//
// plan (pure) -> apply (one transaction per action) -> the informers' change
// kicks the next pass; a timer wakes the controller when a grace period ends.
import { PassLoop } from "./pass-loop.js";
import type { Logger } from "pino";
import { Host } from "../../gen/noid/v1/host.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { HostLossPolicy, Vm, VmDesiredState, VmPhase, type VmSpec } from "../../gen/noid/v1/vm.js";
import type { Compare, Store } from "../store/store.js";
import type { ClusterState } from "../state/cluster.js";
import { keys, lastSegment } from "../state/keys.js";
import { dec, enc } from "../state/codec.js";
import { releaseAlloc, unchanged, type Clock } from "../state/vm-repo.js";

/** The cluster's defaults (coordinator config host_loss). */
export interface HostLossDefaults {
  policy: "keep" | "reschedule";
  graceSeconds: number;
}

export interface EffectiveHostLoss {
  policy: HostLossPolicy.HOST_LOSS_POLICY_KEEP | HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE;
  graceSeconds: number;
}

/** Pure: a VM's policy and grace, the cluster's defaults filling what its spec leaves unset. */
export function effectiveHostLoss(spec: VmSpec | undefined, d: HostLossDefaults): EffectiveHostLoss {
  const p = spec?.hostLoss?.policy ?? HostLossPolicy.HOST_LOSS_POLICY_UNSPECIFIED;
  const policy =
    p === HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE || p === HostLossPolicy.HOST_LOSS_POLICY_KEEP
      ? p
      : d.policy === "reschedule"
        ? HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE
        : HostLossPolicy.HOST_LOSS_POLICY_KEEP;
  return { policy, graceSeconds: spec?.hostLoss?.graceSeconds || d.graceSeconds };
}

/** Pure: the VM as its agent gets it: the effective policy and grace filled in (the agent fences by them). */
export function withEffectiveHostLoss(vm: Vm, d: HostLossDefaults): Vm {
  if (!vm.spec) return vm;
  return { ...vm, spec: { ...vm.spec, hostLoss: effectiveHostLoss(vm.spec, d) } };
}

export type HostLossAction =
  | { kind: "markUnreachable"; hostId: string }
  | { kind: "clearUnreachable"; hostId: string }
  | { kind: "markUnknown"; hostId: string; vmId: string }
  | { kind: "reschedule"; hostId: string; vmId: string; lostForMs: number };

export interface HostLossInput {
  hosts: readonly Host[];
  /** Ids of hosts whose liveness key exists. */
  alive: ReadonlySet<string>;
  vms: readonly Vm[];
  now: number;
  defaults: HostLossDefaults;
}

/**
 * Pure: what to do now, and when to look again (the earliest grace period
 * still running, ms since epoch; undefined when none).
 */
export function planHostLoss(i: HostLossInput): { actions: HostLossAction[]; nextDueAt?: number } {
  const actions: HostLossAction[] = [];
  let nextDueAt: number | undefined;
  const lostSince = new Map<string, number | undefined>();
  for (const h of i.hosts) {
    const alive = i.alive.has(h.id);
    if (alive && h.unreachableSince) actions.push({ kind: "clearUnreachable", hostId: h.id });
    if (!alive) {
      if (!h.unreachableSince) actions.push({ kind: "markUnreachable", hostId: h.id });
      lostSince.set(h.id, h.unreachableSince?.getTime());
    }
  }
  for (const vm of i.vms) {
    const hostId = vm.status?.hostId ?? "";
    if (!hostId || !lostSince.has(hostId)) continue;
    // A VM being destroyed waits for its host (or the host's removal): nothing to run elsewhere.
    if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) continue;
    const since = lostSince.get(hostId);
    const eff = effectiveHostLoss(vm.spec, i.defaults);
    if (eff.policy === HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE && since !== undefined) {
      const due = since + eff.graceSeconds * 1000;
      if (i.now >= due) {
        actions.push({ kind: "reschedule", hostId, vmId: vm.id, lostForMs: i.now - since });
        continue;
      }
      nextDueAt = nextDueAt === undefined ? due : Math.min(nextDueAt, due);
    }
    if (vm.status?.phase !== VmPhase.VM_PHASE_UNKNOWN) actions.push({ kind: "markUnknown", hostId, vmId: vm.id });
  }
  return nextDueAt === undefined ? { actions } : { actions, nextDueAt };
}

export interface HostLossStats {
  markedUnknown: number;
  rescheduled: number;
  conflicts: number;
  /** After a lost race, keys the informers had not caught up with in time. */
  staleWaits: number;
}

export class HostLossController {
  private dueTimer?: NodeJS.Timeout;
  private readonly unsubs: (() => void)[] = [];
  readonly stats: HostLossStats = { markedUnknown: 0, rescheduled: 0, conflicts: 0, staleWaits: 0 };

  private readonly loop: PassLoop;

  constructor(
    private readonly d: { store: Store; cluster: ClusterState; defaults: HostLossDefaults; logger: Logger; clock: Clock },
  ) {
    this.loop = new PassLoop({ pass: () => this.runOnce(), what: "host-loss", logger: d.logger, nextDelayMs: (retry) => (retry ? 200 : 0) });
  }

  start(): void {
    const c = this.d.cluster;
    this.unsubs.push(
      // A host's lease appearing matters only to a host marked unreachable (cleared); with
      // a thousand sessions opening, every other one was a pass over every host and VM.
      c.alive.onChange((ch) => {
        if (ch.type === "delete" || c.hostById(lastSegment(ch.entry.key))?.unreachableSince) this.kick();
      }),
      c.hosts.onChange(() => this.kick()),
      c.vms.onChange((ch) => {
        // Only VMs of hosts without a lease matter here.
        const hostId = ch.type === "put" ? ch.entry.value.status?.hostId : undefined;
        if (hostId && !c.isAlive(hostId)) this.kick();
      }),
    );
    this.kick();
  }

  async stop(): Promise<void> {
    this.unsubs.forEach((u) => u());
    if (this.dueTimer) clearTimeout(this.dueTimer);
    await this.loop.stop();
  }

  kick(delayMs = 0): void {
    this.loop.kick(delayMs);
  }

  /** One observe -> plan -> apply round. Returns true if a transaction lost a race. */
  async runOnce(): Promise<boolean> {
    const c = this.d.cluster;
    const hosts = c.hosts.values().map((e) => e.value);
    const alive = new Set(hosts.filter((h) => c.isAlive(h.id)).map((h) => h.id));
    const now = this.d.clock.now().getTime();
    const { actions, nextDueAt } = planHostLoss({ hosts, alive, vms: c.vms.values().map((e) => e.value), now, defaults: this.d.defaults });
    if (this.dueTimer) clearTimeout(this.dueTimer);
    if (nextDueAt !== undefined && !this.loop.stopped) {
      this.dueTimer = setTimeout(() => this.kick(), Math.max(0, nextDueAt - now) + 50);
    }
    const raced: string[] = [];
    for (const a of actions) {
      if (this.loop.stopped) break;
      const compared = await this.apply(a);
      if (compared) {
        this.stats.conflicts++;
        raced.push(...compared);
      }
    }
    // Plan again from what etcd holds now: wait for the informers to show what was raced on.
    if (raced.length > 0) this.stats.staleWaits += await c.catchUp(this.d.store, raced);
    return raced.length > 0;
  }

  /** Writes one action; undefined when done (or nothing left to do), else the keys its transaction compared (it lost a race). */
  private async apply(a: HostLossAction): Promise<string[] | undefined> {
    const c = this.d.cluster;
    const noLease: Compare = { key: keys.alive(a.hostId), target: "create", op: "==", value: 0 };
    const log = this.d.logger;
    if (a.kind === "markUnreachable" || a.kind === "clearUnreachable") {
      const e = c.hosts.get(keys.host(a.hostId));
      if (!e) return undefined;
      const lost = a.kind === "markUnreachable";
      const next: Host = { ...e.value, unreachableSince: lost ? this.d.clock.now() : undefined };
      const compares = [unchanged(keys.host(a.hostId), e), lost ? noLease : { key: keys.alive(a.hostId), target: "create" as const, op: ">" as const, value: 0 }];
      const r = await this.d.store.txn(compares, [{ type: "put", key: keys.host(a.hostId), value: enc(Host, next) }]);
      if (!r.succeeded) return compares.map((x) => x.key);
      log[lost ? "warn" : "info"]({ host: e.value.name, hostId: a.hostId }, lost ? "host unreachable: its lease expired" : "host reachable again");
      return undefined;
    }
    const e = c.vmEntry(a.vmId);
    if (!e || e.value.status?.hostId !== a.hostId) return undefined;
    const vm = e.value;
    const hostName = vm.status!.hostName;
    if (a.kind === "markUnknown") {
      const next: Vm = { ...vm, status: { ...vm.status!, phase: VmPhase.VM_PHASE_UNKNOWN, reason: `host ${hostName} unreachable`, updatedAt: this.d.clock.now() } };
      const r = await this.d.store.txn([unchanged(keys.vm(vm.id), e), noLease], [{ type: "put", key: keys.vm(vm.id), value: enc(Vm, next) }]);
      if (!r.succeeded) return [keys.vm(vm.id), noLease.key];
      this.stats.markedUnknown++;
      return undefined;
    }
    // reschedule: unassign and give the host's share back, in one transaction, like a drain.
    const allocKv = await this.d.store.get(keys.alloc(a.hostId));
    const next: Vm = {
      ...vm,
      status: {
        ...vm.status!,
        phase: VmPhase.VM_PHASE_PENDING,
        hostId: "",
        hostName: "",
        reason: `rescheduled: host ${hostName} lost for ${Math.round(a.lostForMs / 1000)} s`,
        updatedAt: this.d.clock.now(),
      },
    };
    const r = await this.d.store.txn(
      [unchanged(keys.vm(vm.id), e), unchanged(keys.alloc(a.hostId), allocKv), noLease],
      [
        { type: "put", key: keys.vm(vm.id), value: enc(Vm, next) },
        { type: "delete", key: keys.assign(a.hostId, vm.id) },
        ...(allocKv ? [{ type: "put" as const, key: keys.alloc(a.hostId), value: enc(AllocationRecord, releaseAlloc(dec(AllocationRecord, allocKv.value), vm)) }] : []),
      ],
    );
    if (!r.succeeded) return [keys.vm(vm.id), keys.alloc(a.hostId), noLease.key];
    this.stats.rescheduled++;
    log.warn({ vm: vm.name, vmId: vm.id, host: hostName, lostForMs: a.lostForMs }, "VM rescheduled: its host is lost");
    return undefined;
  }
}
