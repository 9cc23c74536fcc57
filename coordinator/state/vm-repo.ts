// Every write to VM state is one etcd transaction guarded by mod-revision
// compares: no read-modify-write races, no locks. A lost race re-reads and
// tries again; only a real conflict (name taken, limit reached) surfaces.
import { randomBytes } from "node:crypto";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { AllocationRecord, QuotaRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmDesiredState, VmPhase, type VmSpec } from "../../gen/noid/v1/vm.js";
import { NoidError, notFound } from "../../common/errors.js";
import type { Compare, KeyValue, Op, Store, TxnResult } from "../store/store.js";
import { keys } from "./keys.js";
import { dec, enc } from "./codec.js";
import { addToQuota, checkVmLimits, type Limits } from "../limits.js";
import type { VmNetworkPort } from "../networks/vm-network.js";
import type { CreatePlacement } from "../controllers/placement.js";
import { netSel, placementRoom, planCreateTxn, withPlacement, type Counter, type CreateAsk, type CreateView, type NetView } from "./create-plan.js";
import { type LifecycleOp, afterReport, decide } from "../lifecycle/lifecycle.js";

export interface Clock {
  now(): Date;
}

const EMPTY_QUOTA: QuotaRecord = { vms: 0, vcpus: 0, memoryMb: 0 };
const MAX_ATTEMPTS = 20;
/** Creates taken from the queue per round (what does not fit in one transaction goes back). */
const MAX_GROUP = 64;
/** How long the creates' cached counters and address views outlive an empty queue. */
const CREATE_CACHE_IDLE_MS = 5_000;
/** Status reports of one host planned together (each VM: one compare, one put; several hosts share a transaction, see writeStatuses). */
const MAX_STATUS_BATCH = 50;
/** Status puts per group-commit transaction (several hosts' batches), and such transactions in flight at once. */
const MAX_STATUS_GROUP = 100;
const STATUS_WRITERS = 2;

interface PendingCreate {
  owner: string;
  name: string;
  spec: VmSpec;
  limits: Limits;
  peer: string;
  opts: { desired?: VmDesiredState; detail?: string; signal?: AbortSignal };
  attempts: number;
  /** Its last transaction failed: read everything from etcd. */
  fresh?: boolean;
  resolve: (v: StoredVm) => void;
  reject: (e: unknown) => void;
}

interface CreateCache {
  total: Counter;
  quotas: Map<string, Counter>;
  nets: Map<string, NetView>;
}

function counterOf(kv: KeyValue | undefined): Counter {
  return { record: quotaOf(kv), modRevision: kv?.modRevision ?? 0 };
}

/** Which VM names exist, as the informer sees them (may lag etcd either way). */
export interface VmNameIndex {
  has(owner: string, name: string): boolean;
  /** The id of the VM the index last saw with this name (a guess: the index may lag etcd). */
  idOf?(owner: string, name: string): string | undefined;
}

export function newVmId(): string {
  return randomBytes(8).toString("hex");
}

/** Compares that pin a key to the exact state we read (absent -> mod == 0). */
export function unchanged(key: string, kv: { modRevision: number } | undefined): Compare {
  return { key, target: "mod", op: "==", value: kv?.modRevision ?? 0 };
}

function quotaOf(kv: KeyValue | undefined): QuotaRecord {
  return kv ? dec(QuotaRecord, kv.value) : EMPTY_QUOTA;
}

async function backoff(attempt: number): Promise<void> {
  await new Promise((r) => setTimeout(r, Math.min(50, 2 ** attempt) * Math.random()));
}

export interface VmRepoDeps {
  store: Store;
  clock: Clock;
  newId: () => string;
  /** Audit events are written in the same transaction as the change they record. */
  auditKey: (at: Date) => string;
  /** Reserves a VM's address and MAC in its create transaction and releases them in its remove transaction. */
  network?: VmNetworkPort;
  /** Releases a VM's exposed ports and HTTP routes in its remove transaction (coordinator/ports). */
  ports?: { release(vm: Vm): Promise<{ compares: Compare[]; ops: Op[] }> };
  /** Names the informer knows (coordinator/state/name-index.ts): creates read only those from etcd. */
  names?: VmNameIndex;
  /** The informer's copy of a VM (may lag etcd): status reports are planned from it, and a stale one only costs a retry (every write compares). */
  cached?: (id: string) => StoredVm | undefined;
  /**
   * Hosts for VMs being created, placed in their create transaction (the
   * leader's placement controller; undefined elsewhere, or nothing placed:
   * the VMs are created unplaced and a placement pass places them).
   */
  placeAtCreate?: (vms: readonly Vm[], room: { ops: number; compares: number }) => CreatePlacement | undefined;
}

/**
 * The session a status report came through, as a compare every write of the
 * report carries: its host's liveness key is still the one that session
 * wrote (`alive/<host>` at that mod revision). An agent that reconnects gets
 * a new session, which writes the key again: whatever the old session still
 * had queued or in flight (on this replica or another) can no longer land
 * after the new session's reports. The chaos suite caught that: a CREATING
 * report of a session that had just failed was written a second after the
 * new session's RUNNING, and the VM showed CREATING for good. A function:
 * the session may write the key again (a lease renewed too late).
 */
export type StatusFence = () => Compare;

/** One session's fence, as a key: batches of the same session share it in a group commit. */
function fenceId(f: Compare): string {
  return `${f.key}@${String(f.value)}`;
}

/** A session's reports could not be written: the host has a newer session (or no liveness key). */
export function supersededSession(hostId: string): NoidError {
  return new NoidError("FAILED_PRECONDITION", `host ${hostId}: a newer session (or none) holds the host's liveness key; this session's reports are not applied`);
}

export interface StatusReport {
  vmId: string;
  phase: VmPhase;
  reason: string;
  ip: string;
  mac: string;
}

/** What a status report does to a VM: nothing, release it (FAILED), or write `next`. Throws PERMISSION_DENIED for a VM not on `hostId`. */
type StatusStep = { kind: "none" } | { kind: "failed"; ip: string; mac: string } | { kind: "put"; next: Vm };

export interface StoredVm {
  vm: Vm;
  modRevision: number;
}

export class VmRepo {
  constructor(private readonly d: VmRepoDeps) {}

  private auditOp(event: Omit<AuditEvent, "id" | "time">): Op {
    const time = this.d.clock.now();
    const key = this.d.auditKey(time);
    return { type: "put", key: keys.audit(key), value: enc(AuditEvent, { ...event, id: key, time }) };
  }

  async get(id: string): Promise<StoredVm | undefined> {
    const kv = await this.d.store.get(keys.vm(id));
    return kv ? { vm: dec(Vm, kv.value), modRevision: kv.modRevision } : undefined;
  }

  /** Shows why a VM waits for a host (its status reason), if it is still as `cur` was: otherwise someone else decided. */
  async notePending(cur: StoredVm, reason: string): Promise<void> {
    if (cur.vm.status?.reason === reason) return;
    const w = pendingReasonWrite(cur, reason, this.d.clock.now());
    await this.d.store.txn([w.compare], [w.op]);
  }

  /**
   * The VM named `name` of `owner`, read with one etcd read when the name
   * index knows its id. A VM and its name key are written and removed in the
   * same transactions and names never change, so a VM record read from etcd
   * with this owner and name IS what the name key points to at that
   * revision: the guess is checked, never trusted. A wrong or missing guess
   * (index behind etcd) falls back to reading the name key, then the VM.
   */
  async getByName(owner: string, name: string): Promise<StoredVm | undefined> {
    const guess = this.d.names?.idOf?.(owner, name);
    if (guess !== undefined) {
      const cur = await this.get(guess);
      if (cur && cur.vm.owner === owner && cur.vm.name === name) return cur;
    }
    const id = await this.idByName(owner, name);
    return id === undefined ? undefined : this.get(id);
  }

  async idByName(owner: string, name: string): Promise<string | undefined> {
    const kv = await this.d.store.get(keys.vmName(owner, name));
    return kv ? Buffer.from(kv.value).toString("utf8") : undefined;
  }

  /**
   * Writes a new VM (PENDING), its name index, the owner's quota and the
   * cluster total in one transaction that holds only if the name is free and
   * neither counter moved since it was read. With a network port, the VM's
   * address and MAC are reserved in the same transaction.
   *
   * Group commit: creates queue inside the coordinator, and the ones waiting
   * when a round starts are decided together (coordinator/state/create-plan.ts)
   * and written in one transaction, the shared counters once for the group.
   * Every create compares the cluster-wide counter, so one transaction at a
   * time per coordinator is all that can succeed anyway (measured: 1.6
   * creates/s with 200 separate transactions in flight, bench/).
   */
  async create(
    owner: string,
    name: string,
    spec: VmSpec,
    limits: Limits,
    audit: { peer: string },
    opts: { desired?: VmDesiredState; detail?: string; signal?: AbortSignal } = {},
  ): Promise<StoredVm> {
    checkVmLimits(limits, { vcpus: spec.vcpus, memoryMb: spec.memoryMb, diskGb: spec.diskGb });
    return new Promise<StoredVm>((resolve, reject) => {
      this.createQueue.push({ owner, name, spec, limits, peer: audit.peer, opts, attempts: 0, resolve, reject });
      if (!this.creating) {
        this.creating = true;
        void this.drainCreates();
      }
    });
  }

  private createQueue: PendingCreate[] = [];
  private creating = false;
  /**
   * The shared state as this coordinator last read or wrote it, kept while
   * creates keep coming (dropped CREATE_CACHE_IDLE_MS after the queue last ran
   * empty, when a create transaction fails, on this repository's other
   * writes of those keys, and when the watch shows a VM created elsewhere or
   * removed: noteVmChange). Never trusted: every transaction compares what it
   * was planned from, so a stale copy the watch has not shown yet costs one
   * failed round and a re-read.
   * (It used to be dropped as soon as the queue ran empty: at 100-200
   * creates/s the queue empties between most rounds, and each round read the
   * counters, the network, its address lists again: 1.3 gets and 0.5 lists
   * per VM, BENCHMARKS finding 13.)
   */
  private createCache: CreateCache | undefined;
  private cacheIdle: NodeJS.Timeout | undefined;

  /**
   * A VM change from the watch (the coordinator's informer). Every create
   * changes the cluster total, so a VM created after the cached total's
   * revision (by another replica) is not in the cached view, nor is a VM's
   * removal: the view is dropped, so the next round reads the counters and
   * addresses instead of failing its transaction on them first.
   */
  noteVmChange(c: { type: "put"; entry: { createRevision: number; modRevision: number } } | { type: "delete" }): void {
    const cache = this.createCache;
    if (!cache) return;
    if (c.type === "delete" || (c.entry.createRevision === c.entry.modRevision && c.entry.createRevision > cache.total.modRevision)) this.createCache = undefined;
  }

  private async drainCreates(): Promise<void> {
    clearTimeout(this.cacheIdle);
    try {
      while (this.createQueue.length > 0) {
        const group = this.createQueue.splice(0, MAX_GROUP);
        await this.createRound(group).catch((err: unknown) => {
          // Reading failed (etcd unreachable): these creates fail as a single one did.
          this.createCache = undefined;
          for (const p of group) p.reject(err);
        });
      }
    } finally {
      this.creating = false;
      this.cacheIdle = setTimeout(() => (this.createCache = undefined), CREATE_CACHE_IDLE_MS);
      this.cacheIdle.unref();
    }
  }

  /** One round: read what is not cached, plan, write one transaction, answer or queue again. */
  private async createRound(group: PendingCreate[]): Promise<void> {
    const gone = (p: PendingCreate) => {
      if (!p.opts.signal?.aborted) return false;
      // A caller that gave up while queued (deadline, cancel) has been told the create failed:
      // creating the VM now would leave one nobody asked for.
      p.reject(new NoidError("DEADLINE_EXCEEDED", `creating VM "${p.name}": the call ended (deadline or cancel) before it was written; nothing was created`));
      return true;
    };
    let live = group.filter((p) => !gone(p));
    if (live.length === 0) return;
    const view = await this.readCreateView(live);
    live = live.filter((p) => !gone(p));
    if (live.length === 0) return;
    const now = this.d.clock.now();
    const asks: CreateAsk[] = live.map((p, key) => ({
      key,
      owner: p.owner,
      name: p.name,
      spec: p.spec,
      limits: p.limits,
      peer: p.peer,
      desired: p.opts.desired ?? VmDesiredState.VM_DESIRED_STATE_RUNNING,
      detail: p.opts.detail ?? "",
      id: this.d.newId(),
      auditId: this.d.auditKey(now),
      now,
      net: this.d.network ? netSel(p.owner, p.spec.network) : undefined,
    }));
    const plan = planCreateTxn(asks, view);
    const again: PendingCreate[] = [];
    for (const d of plan.deferred) again.push(live[d]!);
    for (const r of plan.rejected) {
      const p = live[r.key]!;
      // A network being deleted (or its addresses moving while read): read again next round.
      if (r.error.code === "CONFLICT") {
        this.createCache = undefined;
        if (++p.attempts < MAX_ATTEMPTS) again.push(p);
        else p.reject(new NoidError("UNAVAILABLE", `creating VM "${p.name}": ${r.error.message}; retry`));
      } else p.reject(r.error);
    }
    if (plan.created.length > 0) {
      let r: TxnResult;
      let placing = this.d.placeAtCreate?.(
        plan.created.map((c) => c.vm),
        placementRoom(plan),
      );
      try {
        r = await this.d.store.txn(...withPlacement(plan, placing));
        placing?.settle(r.succeeded ? r.revision : undefined);
        if (!r.succeeded && placing) {
          // The placement may be what lost the race (an allocation changed, the leader's term
          // ended): the same creates again without it; a placement pass places them.
          placing = undefined;
          r = await this.d.store.txn(plan.compares, plan.ops);
        }
      } catch (err) {
        placing?.settle(undefined);
        this.createCache = undefined;
        for (const c of plan.created) live[c.key]!.reject(err);
        this.requeue(again);
        return;
      }
      if (r.succeeded) {
        this.createCache = {
          total: { record: plan.after.total, modRevision: r.revision },
          quotas: new Map([...view.quotas].map(([o, c]) => [o, plan.after.quotas.has(o) ? { record: plan.after.quotas.get(o)!, modRevision: r.revision } : c])),
          nets: new Map([...view.nets].flatMap(([sel, n]): [string, NetView][] => {
            if (n instanceof NoidError) return [];
            const a = plan.after.nets.get(sel);
            return [[sel, a ? { ...a, state: { ...a.state, modRevision: r.revision } } : n]];
          })),
        };
        for (const c of plan.created) {
          if (c.net) this.d.network?.reportUsage(c.net.network, c.vm.owner, c.net.usage);
          live[c.key]!.resolve({ vm: placing?.placed.get(c.vm.id) ?? c.vm, modRevision: r.revision });
        }
      } else {
        // Someone else wrote a key the group read (another replica, a destroy) or took a
        // name or address meanwhile: decide these again from fresh reads, names from etcd.
        this.createCache = undefined;
        let attempt = 0;
        for (const c of plan.created) {
          const p = live[c.key]!;
          attempt = Math.max(attempt, p.attempts);
          p.fresh = true;
          if (++p.attempts < MAX_ATTEMPTS) again.push(p);
          else p.reject(new NoidError("UNAVAILABLE", `creating VM "${p.name}": too much contention, retry`));
        }
        this.requeue(again);
        await backoff(attempt);
        return;
      }
    }
    this.requeue(again);
  }

  /** Back to the front of the queue, in their order, ahead of newer creates. */
  private requeue(ps: PendingCreate[]): void {
    this.createQueue.unshift(...ps);
  }

  /** The view a round is planned from: cached shared state where there is one, the rest read now. */
  private async readCreateView(group: PendingCreate[]): Promise<CreateView> {
    const cache = this.createCache;
    const owners = [...new Set(group.map((p) => p.owner))];
    const nets = new Map<string, { owner: string; network: string; peer: string }>();
    if (this.d.network) {
      for (const p of group) {
        const sel = netSel(p.owner, p.spec.network);
        if (!nets.has(sel) && !cache?.nets.has(sel)) nets.set(sel, { owner: p.owner, network: p.spec.network, peer: p.peer });
      }
    }
    // Names: the informer's index, when there is one, says which names may be taken (those
    // are read from etcd, so a name freed a moment ago is not refused); a name it does not
    // know is guarded by the transaction alone. After a failed round, every name is read.
    const nameKeys = [...new Set(group.filter((p) => p.fresh || !this.d.names || this.d.names.has(p.owner, p.name)).map((p) => keys.vmName(p.owner, p.name)))];
    const [total, quotas, netReads, names] = await Promise.all([
      cache?.total ?? this.d.store.get(keys.total).then(counterOf),
      Promise.all(owners.map(async (o): Promise<[string, Counter]> => [o, cache?.quotas.get(o) ?? counterOf(await this.d.store.get(keys.quota(o)))])),
      Promise.all(
        [...nets].map(async ([sel, n]): Promise<[string, NetView | NoidError]> => {
          try {
            return [sel, await this.d.network!.snapshot(n.owner, n.network, { user: n.owner, peer: n.peer })];
          } catch (e) {
            if (e instanceof NoidError) return [sel, e];
            throw e;
          }
        }),
      ),
      Promise.all(nameKeys.map(async (k) => ((await this.d.store.get(k)) ? k : undefined))),
    ]);
    const netMap = new Map<string, NetView | NoidError>(cache ? [...cache.nets] : []);
    for (const [sel, n] of netReads) netMap.set(sel, n);
    return {
      total,
      quotas: new Map(quotas),
      nets: netMap,
      takenNames: new Set(names.filter((k): k is string => k !== undefined)),
      nowMs: this.d.clock.now().getTime(),
      graceMs: this.d.network?.graceMs ?? 0,
    };
  }

  /**
   * Destroy: a VM no host has yet is removed at once; a placed VM is marked
   * DELETED for its agent, which tears it down and then confirms (finalize).
   */
  async requestDestroy(id: string, actor: string, peer: string): Promise<{ vm: Vm; removed: boolean }> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`VM ${id}`);
      const vm = cur.vm;
      if (vm.status?.hostId) {
        if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) return { vm, removed: false };
        const next: Vm = {
          ...vm,
          desiredState: VmDesiredState.VM_DESIRED_STATE_DELETED,
          status: { ...vm.status, phase: VmPhase.VM_PHASE_DESTROYING, reason: "destroy requested", updatedAt: this.d.clock.now() },
        };
        const r = await this.d.store.txn(
          [unchanged(keys.vm(id), cur)],
          [
            { type: "put", key: keys.vm(id), value: enc(Vm, next) },
            this.auditOp({ event: "vm.destroy", user: actor, vm: vm.name, host: vm.status.hostName, success: true, detail: `owner ${vm.owner}`, peer }),
          ],
        );
        if (r.succeeded) return { vm: next, removed: false };
      } else {
        const done = await this.tryRemove(cur, undefined, this.auditOp({ event: "vm.destroy", user: actor, vm: vm.name, host: "", success: true, detail: `owner ${vm.owner}`, peer }));
        if (done) return { vm, removed: true };
      }
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `destroying VM ${id}: too much contention, retry`);
  }

  /** Removes the VM, its name, its placement, its address and its share of every counter, in one transaction. */
  private async tryRemove(cur: StoredVm, hostId: string | undefined, extra?: Op): Promise<boolean> {
    const vm = cur.vm;
    const spec = vm.spec!;
    const ask = { vcpus: spec.vcpus, memoryMb: spec.memoryMb, diskGb: spec.diskGb };
    const [userKv, totalKv, allocKv] = await Promise.all([
      this.d.store.get(keys.quota(vm.owner)),
      this.d.store.get(keys.total),
      hostId ? this.d.store.get(keys.alloc(hostId)) : Promise.resolve(undefined),
    ]);
    const compares: Compare[] = [unchanged(keys.vm(vm.id), cur), unchanged(keys.quota(vm.owner), userKv), unchanged(keys.total, totalKv)];
    const ops: Op[] = [
      { type: "delete", key: keys.vm(vm.id) },
      { type: "delete", key: keys.vmName(vm.owner, vm.name) },
      { type: "deletePrefix", prefix: keys.checkpointsOf(vm.id) },
      { type: "put", key: keys.quota(vm.owner), value: enc(QuotaRecord, addToQuota(quotaOf(userKv), ask, -1)) },
      { type: "put", key: keys.total, value: enc(QuotaRecord, addToQuota(quotaOf(totalKv), ask, -1)) },
    ];
    if (hostId) {
      compares.push(unchanged(keys.alloc(hostId), allocKv));
      ops.push({ type: "delete", key: keys.assign(hostId, vm.id) });
      if (allocKv) {
        ops.push({ type: "put", key: keys.alloc(hostId), value: enc(AllocationRecord, releaseAlloc(dec(AllocationRecord, allocKv.value), vm)) });
      }
    }
    if (this.d.network) {
      const rel = await this.d.network.release(vm);
      compares.push(...rel.compares);
      ops.push(...rel.ops);
    }
    if (this.d.ports) {
      const rel = await this.d.ports.release(vm);
      compares.push(...rel.compares);
      ops.push(...rel.ops);
    }
    if (extra) ops.push(extra);
    // The counters and addresses change: the creates' cached view of them is stale.
    this.createCache = undefined;
    const r = await this.d.store.txn(compares, ops);
    return r.succeeded;
  }

  /** FAILED on its host: unassign and release the allocation in one transaction (see reportStatus). */
  private async releaseFailed(cur: StoredVm, hostId: string, reason: string, ip: string, mac: string, fence?: Compare): Promise<boolean> {
    const vm = cur.vm;
    const st = vm.status!;
    const allocKv = await this.d.store.get(keys.alloc(hostId));
    const next: Vm = {
      ...vm,
      status: {
        ...st,
        phase: VmPhase.VM_PHASE_FAILED,
        reason: `on host ${st.hostName}: ${reason}`,
        ip,
        mac,
        hostId: "",
        hostName: "",
        updatedAt: this.d.clock.now(),
        migrationId: "",
        migrationSha256: "",
      },
    };
    const ops: Op[] = [
      { type: "put", key: keys.vm(vm.id), value: enc(Vm, next) },
      { type: "delete", key: keys.assign(hostId, vm.id) },
      ...(allocKv ? [{ type: "put" as const, key: keys.alloc(hostId), value: enc(AllocationRecord, releaseAlloc(dec(AllocationRecord, allocKv.value), vm)) }] : []),
    ];
    const r = await this.d.store.txn([unchanged(keys.vm(vm.id), cur), unchanged(keys.alloc(hostId), allocKv), ...(fence ? [fence] : [])], ops);
    return r.succeeded;
  }

  /**
   * The switch of a migration, one transaction: the VM's status names the target host (phase
   * MIGRATING, with the migration whose state the target restores it from), its placement
   * index and its share of both hosts' allocations move, a pin to the source follows it, and
   * the audit event is written. Holds only if the VM and both allocations are as read, the VM
   * still runs on the source and is not being destroyed, and `fits` accepts the target's
   * allocation as read (else that error is thrown and nothing changed).
   */
  async moveTo(
    id: string,
    from: { id: string; name: string },
    to: { id: string; name: string },
    migration: { id: string; sha256: string; driver: string },
    fits: (vm: Vm, targetAlloc: AllocationRecord | undefined) => void,
    audit: { actor: string; peer: string; detail: string },
  ): Promise<Vm> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`VM ${id}`);
      const vm = cur.vm;
      const st = vm.status!;
      if (st.hostId !== from.id) throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" is no longer on host ${from.name}`);
      if (vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" is being destroyed`);
      if (st.phase !== VmPhase.VM_PHASE_RUNNING) throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" is no longer running`);
      const [fromKv, toKv] = await Promise.all([this.d.store.get(keys.alloc(from.id)), this.d.store.get(keys.alloc(to.id))]);
      const toAlloc = toKv ? dec(AllocationRecord, toKv.value) : undefined;
      fits(vm, toAlloc);
      const spec = vm.spec!;
      const next: Vm = {
        ...vm,
        // A pin follows the VM; so does its driver, made explicit (hosts' defaults differ).
        spec: { ...spec, host: spec.host === from.name ? to.name : spec.host, driver: spec.driver || migration.driver },
        status: {
          ...st,
          phase: VmPhase.VM_PHASE_MIGRATING,
          hostId: to.id,
          hostName: to.name,
          reason: `moving from ${from.name}`,
          updatedAt: this.d.clock.now(),
          migrationId: migration.id,
          migrationSha256: migration.sha256,
        },
      };
      const ops: Op[] = [
        { type: "put", key: keys.vm(id), value: enc(Vm, next) },
        { type: "delete", key: keys.assign(from.id, id) },
        { type: "put", key: keys.assign(to.id, id), value: Buffer.from(id) },
        { type: "put", key: keys.alloc(to.id), value: enc(AllocationRecord, addAlloc(toAlloc, vm)) },
        this.auditOp({ event: "vm.migrate", user: audit.actor, vm: vm.name, host: to.name, success: true, detail: audit.detail, peer: audit.peer }),
      ];
      if (fromKv) ops.push({ type: "put", key: keys.alloc(from.id), value: enc(AllocationRecord, releaseAlloc(dec(AllocationRecord, fromKv.value), vm)) });
      const r = await this.d.store.txn(
        [
          unchanged(keys.vm(id), cur),
          unchanged(keys.alloc(from.id), fromKv),
          unchanged(keys.alloc(to.id), toKv),
          { key: keys.host(to.id), target: "create", op: ">", value: 0 },
        ],
        ops,
      );
      if (r.succeeded) return next;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `moving VM ${id}: too much contention, retry`);
  }

  /**
   * After a switch whose target failed the VM (it reported FAILED, which unassigned it): the
   * VM goes back to its source, where its paused copy waits, in one transaction (status
   * RUNNING there, placement, the source's allocation, a failed "vm.migrate" audit event).
   * The source's share is given back even if the source filled up meanwhile: the VM runs
   * there already, and losing it would be worse than a host over its capacity for a while.
   */
  async returnTo(
    id: string,
    source: { id: string; name: string },
    target: { name: string },
    audit: { actor: string; peer: string },
  ): Promise<Vm> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`VM ${id}`);
      const vm = cur.vm;
      const st = vm.status!;
      if (st.hostId !== "" || st.phase !== VmPhase.VM_PHASE_FAILED || vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) {
        throw new NoidError("FAILED_PRECONDITION", `VM "${vm.name}" changed after its migration failed; not taking it back to ${source.name}`);
      }
      const allocKv = await this.d.store.get(keys.alloc(source.id));
      const spec = vm.spec!;
      const why = st.reason;
      const next: Vm = {
        ...vm,
        spec: spec.host === target.name ? { ...spec, host: source.name } : spec,
        status: {
          ...st,
          phase: VmPhase.VM_PHASE_RUNNING,
          hostId: source.id,
          hostName: source.name,
          reason: `moving to ${target.name} failed (${why}); runs on at ${source.name}`.slice(0, 1000),
          updatedAt: this.d.clock.now(),
          migrationId: "",
          migrationSha256: "",
        },
      };
      const r = await this.d.store.txn(
        [unchanged(keys.vm(id), cur), unchanged(keys.alloc(source.id), allocKv)],
        [
          { type: "put", key: keys.vm(id), value: enc(Vm, next) },
          { type: "put", key: keys.assign(source.id, id), value: Buffer.from(id) },
          { type: "put", key: keys.alloc(source.id), value: enc(AllocationRecord, addAlloc(allocKv ? dec(AllocationRecord, allocKv.value) : undefined, vm)) },
          this.auditOp({ event: "vm.migrate", user: audit.actor, vm: vm.name, host: target.name, success: false, detail: `failed on ${target.name}: ${why}; back on ${source.name}`.slice(0, 512), peer: audit.peer }),
        ],
      );
      if (r.succeeded) return next;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `returning VM ${id} to ${source.name}: too much contention`);
  }

  /**
   * The agent confirmed the VM is gone from its host: the record goes if the
   * VM was being destroyed. A VM still wanted ("kept": not being destroyed,
   * still assigned here) is not removed: an agent destroys one it was never
   * asked to only when its view of what it should run was wrong (a stale
   * snapshot), and removing the record then would lose a VM its owner was
   * told exists. The caller gives the agent the VM again.
   */
  async finalizeDestroy(id: string, hostId: string): Promise<"removed" | "elsewhere" | "kept"> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur || cur.vm.status?.hostId !== hostId) return "elsewhere";
      if (cur.vm.desiredState !== VmDesiredState.VM_DESIRED_STATE_DELETED) return "kept";
      if (await this.tryRemove(cur, hostId)) return "removed";
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `finalizing destroy of VM ${id}: too much contention`);
  }

  /**
   * Changes the desired run state (start/stop). Starting a FAILED VM (which no host holds any
   * more, see reportStatus) sends it back to the scheduler as PENDING.
   */
  async setDesired(id: string, desired: VmDesiredState, actor: string, peer: string): Promise<Vm> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`VM ${id}`);
      if (cur.vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED) {
        throw new NoidError("FAILED_PRECONDITION", `VM "${cur.vm.name}" is being destroyed`);
      }
      const st = cur.vm.status;
      const revive = desired === VmDesiredState.VM_DESIRED_STATE_RUNNING && st?.phase === VmPhase.VM_PHASE_FAILED && !st.hostId;
      if (cur.vm.desiredState === desired && !revive) return cur.vm;
      const next: Vm = {
        ...cur.vm,
        desiredState: desired,
        ...(revive && st ? { status: { ...st, phase: VmPhase.VM_PHASE_PENDING, reason: "", updatedAt: this.d.clock.now() } } : {}),
      };
      // An explicit start or stop replaces a restart in progress.
      if (next.status?.restartPending) next.status = { ...next.status, restartPending: false };
      const event = desired === VmDesiredState.VM_DESIRED_STATE_RUNNING ? "vm.start" : "vm.stop";
      const r = await this.d.store.txn(
        [unchanged(keys.vm(id), cur)],
        [
          { type: "put", key: keys.vm(id), value: enc(Vm, next) },
          this.auditOp({ event, user: actor, vm: cur.vm.name, host: cur.vm.status?.hostName ?? "", success: true, detail: "", peer }),
        ],
      );
      if (r.succeeded) return next;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `updating VM ${id}: too much contention, retry`);
  }

  /**
   * Pause, resume or restart (coordinator/lifecycle): the rule decides from the VM as read,
   * the write is one transaction with its audit event that holds only if the VM did not
   * change meanwhile. A refusal is FAILED_PRECONDITION and changes nothing. `check` runs on
   * the VM as read (the driver's capability) before anything is written.
   */
  async lifecycle(id: string, op: LifecycleOp, actor: string, peer: string, check?: (vm: Vm) => void): Promise<Vm> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const cur = await this.get(id);
      if (!cur) throw notFound(`VM ${id}`);
      const d = decide(op, cur.vm);
      if (d.kind === "refuse") throw new NoidError("FAILED_PRECONDITION", d.reason);
      if (d.kind === "noop") return cur.vm;
      check?.(cur.vm);
      const st = cur.vm.status!;
      const next: Vm = { ...cur.vm, desiredState: d.desired, status: { ...st, restartPending: d.restartPending, updatedAt: this.d.clock.now() } };
      const r = await this.d.store.txn(
        [unchanged(keys.vm(id), cur)],
        [
          { type: "put", key: keys.vm(id), value: enc(Vm, next) },
          this.auditOp({ event: `vm.${op}`, user: actor, vm: cur.vm.name, host: st.hostName, success: true, detail: "", peer }),
        ],
      );
      if (r.succeeded) return next;
      await backoff(attempt);
    }
    throw new NoidError("UNAVAILABLE", `updating VM ${id}: too much contention, retry`);
  }

  /**
   * Writes the status an agent observed, only for a VM assigned to that agent's host.
   * FAILED releases the VM's place: the agent has removed what was left of it, so the same
   * transaction unassigns it and gives its share back to the host's allocation. The VM keeps
   * its name, address and quota, shows the reason, and waits for start (placed again) or destroy.
   */
  async reportStatus(hostId: string, report: StatusReport, fence?: StatusFence): Promise<void> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      // The first try plans from the informer's copy; a retry reads etcd.
      const cur = (attempt === 0 ? this.d.cached?.(report.vmId) : undefined) ?? (await this.get(report.vmId));
      if (!cur) return;
      const step = this.statusStep(cur, hostId, report);
      if (step.kind === "none") return;
      const f = fence?.();
      if (step.kind === "failed") {
        if (await this.releaseFailed(cur, hostId, report.reason, step.ip, step.mac, f)) return;
      } else {
        const r = await this.d.store.txn([unchanged(keys.vm(cur.vm.id), cur), ...(f ? [f] : [])], [{ type: "put", key: keys.vm(cur.vm.id), value: enc(Vm, step.next) }]);
        if (r.succeeded) return;
      }
      if (f) await this.checkFence(hostId, f);
      if (attempt > 0) await backoff(attempt);
    }
  }

  /** After a failed write: throws supersededSession if the fence no longer holds (else the VM changed: retry). */
  private async checkFence(hostId: string, f: Compare): Promise<void> {
    const kv = await this.d.store.get(f.key);
    if ((kv?.modRevision ?? 0) !== f.value) throw supersededSession(hostId);
  }

  /**
   * Several reports of one host at once (an agent reports its VMs in bursts):
   * the plain status changes of different VMs go in one transaction, planned
   * from the informer's copy; what that cannot take (a VM reported twice, a
   * FAILED report, a lost race) goes through reportStatus one by one, in
   * order. Returns the VMs whose report was refused as not on this host
   * (PERMISSION_DENIED): the others are applied all the same.
   */
  async reportStatuses(hostId: string, reports: readonly StatusReport[], fence?: StatusFence): Promise<string[]> {
    const refused: string[] = [];
    const one = async (r: StatusReport) => {
      try {
        await this.reportStatus(hostId, r, fence);
      } catch (e) {
        if (!(e instanceof NoidError && e.code === "PERMISSION_DENIED")) throw e;
        refused.push(r.vmId);
      }
    };
    const seen = new Set<string>();
    const batch: { report: StatusReport; cur: StoredVm; next: Vm }[] = [];
    const rest: StatusReport[] = [];
    for (const r of reports) {
      const cur = this.d.cached?.(r.vmId);
      // After the first report of a VM (or one that needs more than a status write), keep the order: one by one.
      if (!cur || seen.has(r.vmId) || rest.length > 0 || batch.length >= MAX_STATUS_BATCH) {
        rest.push(r);
        continue;
      }
      let step: StatusStep;
      try {
        step = this.statusStep(cur, hostId, r);
      } catch (e) {
        if (!(e instanceof NoidError && e.code === "PERMISSION_DENIED")) throw e;
        refused.push(r.vmId);
        continue;
      }
      if (step.kind === "failed") {
        rest.push(r);
        continue;
      }
      seen.add(r.vmId);
      if (step.kind === "put") batch.push({ report: r, cur, next: step.next });
    }
    if (batch.length > 0) {
      const ok = await this.writeStatuses(
        batch.map((b) => ({ cur: b.cur, next: b.next })),
        fence,
      );
      // A VM changed since the copy was read (or the copy lagged): apply these one by one, ahead of the rest.
      if (!ok) rest.unshift(...batch.map((b) => b.report));
    }
    for (const r of rest) await one(r);
    return refused;
  }

  /**
   * Group commit of status writes across hosts: with a thousand hosts each
   * reporting one or two VMs, a transaction per host was a thousand
   * transactions for a burst of placements. The batches queued while a
   * write is in flight go together in the next one (up to
   * MAX_STATUS_GROUP puts, STATUS_WRITERS at a time), each VM compared
   * unchanged since it was planned. If that transaction fails, its halves
   * are tried again, so one stale copy fails only its own batch (which then
   * goes one by one), not the others'. Resolves true when the batch was written.
   */
  private writeStatuses(batch: { cur: StoredVm; next: Vm }[], fence?: StatusFence): Promise<boolean> {
    return new Promise<boolean>((resolve, reject) => {
      this.statusQueue.push({ batch, ...(fence ? { fence } : {}), resolve, reject });
      if (this.statusWriters < STATUS_WRITERS) {
        this.statusWriters++;
        void this.drainStatuses();
      }
    });
  }

  private statusQueue: { batch: { cur: StoredVm; next: Vm }[]; fence?: StatusFence; resolve: (ok: boolean) => void; reject: (e: unknown) => void }[] = [];
  private statusWriters = 0;

  private async drainStatuses(): Promise<void> {
    try {
      // The reports that arrived with this one (other sessions' messages read in the same turn) join it.
      await new Promise((r) => setImmediate(r));
      while (this.statusQueue.length > 0) {
        // Batches in arrival order, until the group is full or a VM would be written twice in it.
        // etcd limits compares as it limits puts (--max-txn-ops): one per VM plus one per
        // session's fence, so a group of single reports from many hosts holds half as many.
        const group: typeof this.statusQueue = [];
        const ids = new Set<string>();
        const fenceKeys = new Set<string>();
        let puts = 0;
        for (let i = 0; i < this.statusQueue.length; ) {
          const e = this.statusQueue[i]!;
          const f = e.fence?.();
          const fk = f ? fenceId(f) : undefined;
          const compares = puts + fenceKeys.size + e.batch.length + (fk !== undefined && !fenceKeys.has(fk) ? 1 : 0);
          const fits = group.length === 0 || compares <= MAX_STATUS_GROUP;
          if (!fits) break;
          if (e.batch.some((b) => ids.has(b.cur.vm.id))) {
            i++;
            continue;
          }
          for (const b of e.batch) ids.add(b.cur.vm.id);
          if (fk !== undefined) fenceKeys.add(fk);
          puts += e.batch.length;
          group.push(e);
          this.statusQueue.splice(i, 1);
        }
        const write = (g: typeof group) => {
          const batch = g.flatMap((e) => e.batch);
          // Each session's fence once (several batches of one session may share the group).
          const fences = new Map<string, Compare>();
          for (const e of g) {
            const f = e.fence?.();
            if (f) fences.set(fenceId(f), f);
          }
          return this.d.store.txn(
            [...batch.map((b) => unchanged(keys.vm(b.cur.vm.id), b.cur)), ...fences.values()],
            batch.map((b): Op => ({ type: "put", key: keys.vm(b.cur.vm.id), value: enc(Vm, b.next) })),
          );
        };
        // A failed group is split in halves and each tried again: a stale copy (or a session
        // superseded) costs about 2·log2(batches) transactions, and only its own batch goes on
        // one by one (where a fence that fails ends the session).
        const settle = async (g: typeof group): Promise<void> => {
          const t = await write(g);
          if (t.succeeded || g.length === 1) {
            for (const e of g) e.resolve(t.succeeded);
            return;
          }
          const half = Math.ceil(g.length / 2);
          await Promise.all([settle(g.slice(0, half)), settle(g.slice(half))]);
        };
        try {
          await settle(group);
        } catch (err) {
          for (const e of group) e.reject(err);
        }
      }
    } finally {
      this.statusWriters--;
    }
  }

  /** Pure: what `report` does to `cur` (see reportStatus). */
  private statusStep(cur: StoredVm, hostId: string, report: StatusReport): StatusStep {
    const st = cur.vm.status;
    if (!st || st.hostId !== hostId) {
      throw new NoidError("PERMISSION_DENIED", `VM ${report.vmId} is not assigned to host ${hostId}`);
    }
    // A VM being destroyed keeps showing DESTROYING until the agent confirms; one moving
    // here shows MIGRATING until it runs (or failed).
    const arriving = st.migrationId !== "" && (report.phase === VmPhase.VM_PHASE_CREATING || report.phase === VmPhase.VM_PHASE_STOPPED);
    const phase =
      cur.vm.desiredState === VmDesiredState.VM_DESIRED_STATE_DELETED ? VmPhase.VM_PHASE_DESTROYING : arriving ? VmPhase.VM_PHASE_MIGRATING : report.phase;
    // An address and MAC the coordinator reserved (IPAM) are the VM's; an
    // agent's report does not move them (the release must find them again).
    const ip = st.networkId ? st.ip : report.ip || st.ip;
    const mac = st.networkId ? st.mac : report.mac || st.mac;
    if (phase === VmPhase.VM_PHASE_FAILED) return { kind: "failed", ip, mac };
    // A restart in progress continues once the VM is reported stopped.
    const restart = afterReport(cur.vm, phase);
    if (!restart && st.phase === phase && st.reason === report.reason && st.ip === ip && st.mac === mac) return { kind: "none" };
    // A migrated VM that runs no longer needs its migration's state.
    const arrived = phase === VmPhase.VM_PHASE_RUNNING ? { migrationId: "", migrationSha256: "" } : {};
    return {
      kind: "put",
      next: {
        ...cur.vm,
        ...(restart ? { desiredState: restart.desired } : {}),
        status: { ...st, phase, reason: report.reason, ip, mac, updatedAt: this.d.clock.now(), ...(restart ? { restartPending: false } : {}), ...arrived },
      },
    };
  }
}

/** The write that shows why a VM waits for a host, compared unchanged since `cur` was read (CreateVm's answer, the placement pass). */
export function pendingReasonWrite(cur: StoredVm, reason: string, now: Date): { compare: Compare; op: Op } {
  const next: Vm = { ...cur.vm, status: { ...cur.vm.status!, reason, updatedAt: now } };
  return { compare: unchanged(keys.vm(cur.vm.id), cur), op: { type: "put", key: keys.vm(cur.vm.id), value: enc(Vm, next) } };
}

export function releaseAlloc(a: AllocationRecord, vm: Vm): AllocationRecord {
  const spec = vm.spec!;
  const dec1 = (m: Record<string, number>, k: string) => {
    const out = { ...m };
    if (k === "") return out;
    const n = (out[k] ?? 0) - 1;
    if (n > 0) out[k] = n;
    else delete out[k];
    return out;
  };
  const cur = a.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
  return {
    allocated: {
      vcpus: Math.max(0, cur.vcpus - spec.vcpus),
      memoryMb: Math.max(0, cur.memoryMb - spec.memoryMb),
      diskGb: Math.max(0, cur.diskGb - spec.diskGb),
    },
    vmCount: Math.max(0, a.vmCount - 1),
    groups: dec1(a.groups, spec.antiAffinityGroup),
    networks: dec1(a.networks, networkKey(vm)),
  };
}

export function addAlloc(a: AllocationRecord | undefined, vm: Vm): AllocationRecord {
  const spec = vm.spec!;
  const inc = (m: Record<string, number>, k: string) => (k === "" ? { ...m } : { ...m, [k]: (m[k] ?? 0) + 1 });
  const cur = a?.allocated ?? { vcpus: 0, memoryMb: 0, diskGb: 0 };
  return {
    allocated: { vcpus: cur.vcpus + spec.vcpus, memoryMb: cur.memoryMb + spec.memoryMb, diskGb: cur.diskGb + spec.diskGb },
    vmCount: (a?.vmCount ?? 0) + 1,
    groups: inc(a?.groups ?? {}, spec.antiAffinityGroup),
    networks: inc(a?.networks ?? {}, networkKey(vm)),
  };
}

/** The network a VM is on, as the scheduler's locality key ("" for isolated VMs). */
export function networkKey(vm: Vm): string {
  const n = vm.spec?.network ?? "";
  if (n === "isolated") return "";
  return `${vm.owner}/${n || "default"}`;
}
