// The placement controller: whenever VMs wait or capacity changes, ask the
// pure scheduler for decisions and commit them in transactions that fail if
// any of their VMs or hosts' allocations moved since they were read. Several
// VMs go in one transaction (planPlacementTxns, pure), each host in at most
// one transaction per pass, so the transactions of a pass are independent and
// are committed a few at a time.
import { PassLoop } from "./pass-loop.js";
import type { Logger } from "pino";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import type { Compare, Op, Store } from "../store/store.js";
import type { Entry } from "../state/informer.js";
import { scheduleBatch } from "../scheduler/index.js";
import type { Decision, Policy, VmRequest } from "../scheduler/types.js";
import type { ClusterState } from "../state/cluster.js";
import { keys } from "../state/keys.js";
import { enc } from "../state/codec.js";
import { addAlloc, networkKey, unchanged, type Clock } from "../state/vm-repo.js";

export function requestOf(vm: Vm): VmRequest {
  const s = vm.spec!;
  return {
    id: vm.id,
    resources: { vcpus: s.vcpus, memoryMb: s.memoryMb, diskGb: s.diskGb },
    driver: s.driver,
    hostSelector: s.hostSelector,
    host: s.host,
    antiAffinityGroup: s.antiAffinityGroup,
    networkId: networkKey(vm),
  };
}

/** Waiting for a host. A FAILED VM waits for its owner instead (start places it again). */
export function isUnplaced(vm: Vm): boolean {
  return !vm.status?.hostId && vm.desiredState !== VmDesiredState.VM_DESIRED_STATE_DELETED && vm.status?.phase !== VmPhase.VM_PHASE_FAILED;
}

export interface PlacementStats {
  attempts: number;
  placed: number;
  /** Placement transactions that lost a race (each may hold several VMs). */
  conflicts: number;
  unplaceable: number;
  /** Placement transactions committed or tried (several VMs each). */
  txns?: number;
}

/**
 * etcd refuses a transaction with more than 128 operations in either branch
 * (--max-txn-ops); the HA fence adds one compare. Each host takes 2 compares
 * (allocation unchanged, host exists) and 1 put, each VM 1 compare and 2 puts.
 */
export const MAX_TXN_OPS = 100;
/** Placement transactions in flight at once (they touch disjoint keys). */
const COMMIT_CONCURRENCY = 4;
/** VMs decided per pass, and between two yields to the event loop. */
const PASS_MAX_VMS = 2000;
const SLICE_VMS = 100;

export interface PlacementItem {
  entry: { value: Vm; modRevision: number };
  hostId: string;
  hostName: string;
}

export interface PlannedTxn {
  compares: Compare[];
  ops: Op[];
  /** The VMs this transaction places, in the order given. */
  vmIds: string[];
  /** The hosts it touches, with their allocation as it writes it. */
  allocs: Map<string, AllocationRecord>;
}

/**
 * Groups placement decisions into transactions. Pure. Each host appears in at
 * most one transaction, with all of its VMs of this pass up to what fits in
 * one (the rest are `deferred`: the next pass decides them again). Every
 * transaction compares each of its VMs and each host's allocation against the
 * revisions read, so it commits only if the capacity the scheduler saw is
 * still the capacity there is; the allocation it writes is the read one plus
 * its VMs. `items` in the order the scheduler decided them.
 */
export function planPlacementTxns(
  items: readonly PlacementItem[],
  allocOf: (hostId: string) => { record: AllocationRecord | undefined; modRevision: number },
  now: Date,
  maxOps = MAX_TXN_OPS,
): { txns: PlannedTxn[]; deferred: number } {
  const perHostMax = Math.max(1, Math.floor((maxOps - 1) / 2));
  const byHost = new Map<string, PlacementItem[]>();
  let deferred = 0;
  for (const it of items) {
    const list = byHost.get(it.hostId) ?? [];
    if (list.length >= perHostMax) {
      deferred++;
      continue;
    }
    list.push(it);
    byHost.set(it.hostId, list);
  }
  const txns: PlannedTxn[] = [];
  let cur: PlannedTxn | undefined;
  let curOps = 0;
  for (const [hostId, list] of byHost) {
    const need = 1 + 2 * list.length;
    if (!cur || curOps + need > maxOps) {
      cur = { compares: [], ops: [], vmIds: [], allocs: new Map() };
      curOps = 0;
      txns.push(cur);
    }
    curOps += need;
    const alloc = allocOf(hostId);
    let record = alloc.record;
    cur.compares.push(unchanged(keys.alloc(hostId), alloc), { key: keys.host(hostId), target: "create", op: ">", value: 0 });
    for (const { entry, hostName } of list) {
      const vm = entry.value;
      const placed: Vm = {
        ...vm,
        status: { ...vm.status!, phase: VmPhase.VM_PHASE_PENDING, hostId, hostName, reason: "", updatedAt: now },
      };
      record = addAlloc(record, vm);
      cur.compares.push(unchanged(keys.vm(vm.id), entry));
      cur.ops.push({ type: "put", key: keys.vm(vm.id), value: enc(Vm, placed) }, { type: "put", key: keys.assign(hostId, vm.id), value: Buffer.from(vm.id) });
      cur.vmIds.push(vm.id);
    }
    cur.ops.push({ type: "put", key: keys.alloc(hostId), value: enc(AllocationRecord, record!) });
    cur.allocs.set(hostId, record!);
  }
  return { txns, deferred };
}

export class PlacementController {
  private readonly loop: PassLoop;
  private readonly unsubs: (() => void)[] = [];
  readonly stats: PlacementStats = { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0, txns: 0 };
  private readonly maxOps: number;

  constructor(
    private readonly d: { store: Store; cluster: ClusterState; policy: Policy; logger: Logger; clock: Clock; maxTxnOps?: number },
  ) {
    this.maxOps = d.maxTxnOps ?? MAX_TXN_OPS;
    // A pass over a large backlog is expensive (every pending VM against every host): the
    // next one waits as long as this one took (at most 1 s), so a stream of creates cannot
    // keep the process busy placing.
    this.loop = new PassLoop({
      pass: () => this.placePending(),
      what: "placement",
      logger: d.logger,
      nextDelayMs: (retry, tookMs) => (retry ? 100 : Math.min(1000, Math.round(tookMs))),
    });
  }

  start(): void {
    const c = this.d.cluster;
    this.unsubs.push(
      c.vms.onChange((ch) => {
        if (ch.type === "put" && isUnplaced(ch.entry.value) && !(ch.prev && isUnplaced(ch.prev.value))) this.kick();
        if (ch.type === "delete") this.kick(); // capacity freed
      }),
      c.hosts.onChange(() => this.kick()),
      c.alive.onChange(() => this.kick()),
      c.alloc.onChange((ch) => {
        if (ch.type === "put" && ch.prev && ch.entry.value.vmCount < ch.prev.value.vmCount) this.kick();
      }),
    );
    this.kick();
  }

  async stop(): Promise<void> {
    this.unsubs.forEach((u) => u());
    await this.loop.stop();
  }

  /** Runs a pass soon; passes never overlap, and a kick during a pass runs one more. */
  kick(delayMs = 0): void {
    this.loop.kick(delayMs);
  }

  /**
   * One pass over every unplaced VM, oldest first: the pure scheduler decides
   * them all, planPlacementTxns groups the decisions into transactions (each
   * host in at most one, so they are independent) and those are committed a
   * few at a time. Returns true if a commit lost a race or placements were
   * left for the next pass.
   */
  async placePending(): Promise<boolean> {
    const c = this.d.cluster;
    const waiting = c.vms
      .values()
      .filter((e) => isUnplaced(e.value))
      .sort((a, b) => a.createRevision - b.createRevision);
    if (waiting.length === 0) return false;
    // At most PASS_MAX_VMS per pass (the rest next pass), decided SLICE_VMS at
    // a time with a yield between: one scheduleBatch over thousands of VMs
    // and hosts blocks the event loop for seconds, and the etcd calls and
    // sessions of the whole coordinator wait behind it. Deciding slice after
    // slice on the views the previous slice left is the same as one batch.
    const pending = waiting.slice(0, PASS_MAX_VMS);
    if (waiting.length > pending.length) this.loop.again();
    let views = c.hostViews();
    const decisions: Decision[] = [];
    for (let i = 0; i < pending.length; i += SLICE_VMS) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      if (this.loop.stopped) return false;
      const r = scheduleBatch(views, pending.slice(i, i + SLICE_VMS).map((e) => requestOf(e.value)), this.d.policy);
      decisions.push(...r.decisions);
      views = r.hosts;
    }
    const items: PlacementItem[] = [];
    const unplaceable: { entry: Entry<Vm>; reason: string }[] = [];
    for (const [i, decision] of decisions.entries()) {
      const entry = pending[i]!;
      if (!decision.placed) unplaceable.push({ entry, reason: decision.reason });
      else {
        const host = c.hostById(decision.hostId);
        if (host) items.push({ entry, hostId: host.id, hostName: host.name });
      }
    }
    const plan = planPlacementTxns(items, (id) => c.allocationOf(id), this.d.clock.now(), this.maxOps);
    let lostRace = false;
    let committed = 0;
    let next = 0;
    const worker = async (): Promise<void> => {
      while (!this.loop.stopped && next < plan.txns.length) {
        const t = plan.txns[next++]!;
        this.stats.attempts += t.vmIds.length;
        const r = await this.d.store.txn(t.compares, t.ops);
        this.stats.txns = (this.stats.txns ?? 0) + 1;
        if (r.succeeded) {
          this.stats.placed += t.vmIds.length;
          committed = Math.max(committed, r.revision);
        }
        else {
          // Someone else changed one of these VMs or hosts: decide them again with fresh state.
          this.stats.conflicts++;
          lostRace = true;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(COMMIT_CONCURRENCY, plan.txns.length) }, worker));
    for (const u of unplaceable) {
      if (this.loop.stopped) break;
      this.stats.attempts++;
      this.stats.unplaceable++;
      await this.noteUnplaceable(u.entry, u.reason);
    }
    if (lostRace) committed = await this.d.store.revision();
    // The next pass must see this one's writes (else it decides the same VMs again and loses).
    if (committed > 0) await Promise.all([c.vms.waitFor(committed), c.alloc.waitFor(committed)]).catch(() => undefined);
    if (plan.deferred > 0) this.loop.again();
    return lostRace;
  }

  private async noteUnplaceable(entry: { value: Vm; modRevision: number }, reason: string): Promise<void> {
    const vm = entry.value;
    if (vm.status?.reason === reason) return;
    const next: Vm = { ...vm, status: { ...vm.status!, reason, updatedAt: this.d.clock.now() } };
    await this.d.store.txn([unchanged(keys.vm(vm.id), entry)], [{ type: "put", key: keys.vm(vm.id), value: enc(Vm, next) }]);
  }
}
