// The placement controller: whenever VMs wait or capacity changes, ask the
// pure scheduler for decisions and commit them in transactions that fail if
// any of their VMs or hosts' allocations moved since they were read. Several
// VMs go in one transaction (planPlacementTxns, pure); a host with more VMs
// than one transaction holds gets a chain of them, each sent once the one
// before committed; the rest are independent and several are in flight.
import { PassLoop } from "./pass-loop.js";
import type { Logger } from "pino";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import type { Compare, Op, Store } from "../store/store.js";
import type { Entry } from "../state/informer.js";
import { BatchScheduler } from "../scheduler/index.js";
import type { Decision, Policy, VmRequest } from "../scheduler/types.js";
import type { ClusterState } from "../state/cluster.js";
import { keys } from "../state/keys.js";
import { enc } from "../state/codec.js";
import { addAlloc, networkKey, pendingReasonWrite, unchanged, type Clock } from "../state/vm-repo.js";
import { viewWithAllocation, type ViewMark } from "../state/cluster.js";
import type { HostView } from "../scheduler/types.js";
import { fenceCompare } from "../ha/leader.js";

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

/** A VM as a placement writes it: PENDING on its host, no reason to wait. */
function placedOn(vm: Vm, hostId: string, hostName: string, now: Date): Vm {
  return { ...vm, status: { ...vm.status!, phase: VmPhase.VM_PHASE_PENDING, hostId, hostName, reason: "", updatedAt: now } };
}

/** The compare every placement on a host carries: the host still exists. */
function hostExists(hostId: string): Compare {
  return { key: keys.host(hostId), target: "create", op: ">", value: 0 };
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
  /** Passes that decided at least one VM. */
  passes?: number;
  /** After a lost race, waits for the informers to show the keys raced on that ran out of time. */
  staleWaits?: number;
}

/**
 * etcd refuses a transaction with more than 128 operations in either branch
 * (--max-txn-ops); the HA fence adds one compare. Each host takes 2 compares
 * (allocation unchanged, host exists) and 1 put, each VM 1 compare and 2 puts.
 */
export const MAX_TXN_OPS = 100;
/** Placement transactions in flight at once (those in flight together touch disjoint keys). */
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
  /**
   * Transactions (indices into the plan) that must have committed before
   * this one is sent: they wrote the allocations this one compares against.
   */
  after: number[];
}

/**
 * Groups placement decisions into transactions. Pure. A host's VMs of this
 * pass are cut into chunks that fit one transaction; its first chunk compares
 * the host's allocation against the revision read, each later chunk compares
 * the allocation's value against the exact bytes the chunk before it writes
 * (and runs after it): so every chunk commits only if the allocation is
 * still what the scheduler counted on, and a chunk whose predecessor failed
 * is not sent (its VMs are decided again next pass). Every transaction also
 * compares each of its VMs (unchanged since read) and that each host exists.
 * Chunks of different hosts share a transaction while they fit, so the
 * first chunks of a pass are few, independent transactions.
 * `items` in the order the scheduler decided them.
 */
export function planPlacementTxns(
  items: readonly PlacementItem[],
  allocOf: (hostId: string) => { record: AllocationRecord | undefined; modRevision: number },
  now: Date,
  maxOps = MAX_TXN_OPS,
): { txns: PlannedTxn[] } {
  // Per host: 1 compare + 1 put for the allocation, 1 compare for its
  // existence; per VM: 1 compare, 2 puts. Puts bind first (1 + 2n).
  const perChunkMax = Math.max(1, Math.floor((maxOps - 1) / 2));
  const byHost = new Map<string, PlacementItem[]>();
  for (const it of items) {
    const list = byHost.get(it.hostId);
    if (list) list.push(it);
    else byHost.set(it.hostId, [it]);
  }
  // Chunk r of every host goes in round r; rounds are packed in order.
  const rounds: { hostId: string; list: PlacementItem[] }[][] = [];
  for (const [hostId, list] of byHost) {
    for (let r = 0, i = 0; i < list.length; r++, i += perChunkMax) {
      (rounds[r] ??= []).push({ hostId, list: list.slice(i, i + perChunkMax) });
    }
  }
  const txns: PlannedTxn[] = [];
  /** Per host: its allocation as the last planned chunk writes it, those bytes, and that chunk's transaction. */
  const last = new Map<string, { record: AllocationRecord | undefined; bytes?: Uint8Array; txn?: number }>();
  for (const round of rounds) {
    let cur: PlannedTxn | undefined;
    let curOps = 0;
    for (const { hostId, list } of round) {
      const need = 1 + 2 * list.length;
      if (!cur || curOps + need > maxOps) {
        cur = { compares: [], ops: [], vmIds: [], allocs: new Map(), after: [] };
        curOps = 0;
        txns.push(cur);
      }
      curOps += need;
      const prev = last.get(hostId);
      let record: AllocationRecord | undefined;
      if (!prev) {
        const alloc = allocOf(hostId);
        record = alloc.record;
        cur.compares.push(unchanged(keys.alloc(hostId), alloc));
      } else {
        record = prev.record;
        cur.compares.push({ key: keys.alloc(hostId), target: "value", op: "==", value: prev.bytes! });
        if (!cur.after.includes(prev.txn!)) cur.after.push(prev.txn!);
      }
      cur.compares.push(hostExists(hostId));
      for (const { entry, hostName } of list) {
        const vm = entry.value;
        record = addAlloc(record, vm);
        cur.compares.push(unchanged(keys.vm(vm.id), entry));
        cur.ops.push({ type: "put", key: keys.vm(vm.id), value: enc(Vm, placedOn(vm, hostId, hostName, now)) }, { type: "put", key: keys.assign(hostId, vm.id), value: Buffer.from(vm.id) });
        cur.vmIds.push(vm.id);
      }
      const bytes = enc(AllocationRecord, record!);
      cur.ops.push({ type: "put", key: keys.alloc(hostId), value: bytes });
      cur.allocs.set(hostId, record!);
      last.set(hostId, { record, bytes, txn: txns.length - 1 });
    }
  }
  return { txns };
}

/**
 * Placement decided while a VM is being created, to go in its create
 * transaction (PlacementController.placeAtCreate). The create writes `placed`
 * instead of the unplaced records it planned, adds these compares and
 * operations, and calls `settle` once with the outcome.
 */
export interface CreatePlacement {
  compares: Compare[];
  ops: Op[];
  /** By VM id: the record as placed. VMs not in here stay unplaced (the controller's passes place them). */
  placed: Map<string, Vm>;
  /** The transaction's revision if it committed, undefined if it did not (or its outcome is unknown). */
  settle(revision: number | undefined): void;
}

export class PlacementController {
  private readonly loop: PassLoop;
  private readonly unsubs: (() => void)[] = [];
  readonly stats: PlacementStats = { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0, txns: 0, passes: 0, staleWaits: 0 };
  private readonly maxOps: number;
  /** Time the last pass spent deciding (synchronous work between its yields). */
  private busyMs = 0;
  /**
   * What this controller's committed transactions wrote and the informer may
   * not show yet: VMs placed (id -> revision) and hosts' allocations. The next
   * pass starts at once instead of waiting for the watch, planning from these
   * where they are newer (every transaction still compares what it planned from).
   */
  private readonly placedAhead = new Map<string, number>();
  private readonly allocAhead = new Map<string, { record: AllocationRecord; modRevision: number }>();
  /**
   * The VMs waiting for a host (isUnplaced), kept change by change from the
   * informer: a pass looks at these, not at every VM (a scan of all VMs per
   * pass was 100,000 checks per pass at 100,000 VMs, passes tens per second).
   */
  private readonly unplaced = new Map<string, Entry<Vm>>();
  /**
   * Hosts whose allocation has a write in flight, by whom: a pass's commit
   * or a create placing at once (placeAtCreate). Neither decides for a host
   * the other is writing: its allocation is about to change, and a second
   * write planned from the old one would only lose the race.
   */
  private readonly writing = new Map<string, { pass: number; create: number }>();
  /** Hosts placed on at create while the current pass decides, or before it began and not yet settled (it drops what it decided for them). */
  private readonly createdOn = new Set<string>();
  /** The scheduler placeAtCreate decides with, updated with the views changed since its last call (createBatchNow). */
  private createBatch: BatchScheduler | undefined;
  /** Where the host view list stood at createBatchNow's last call, and the hosts it showed with an allocation written ahead. */
  private createMark: ViewMark | undefined;
  private createAhead = new Set<string>();

  constructor(
    private readonly d: {
      store: Store;
      cluster: ClusterState;
      policy: Policy;
      logger: Logger;
      clock: Clock;
      maxTxnOps?: number;
      /** The leader term's fencing token: placements made in a create transaction compare it (the controller's own writes go through a fenced store). */
      fence?: number;
    },
  ) {
    this.maxOps = d.maxTxnOps ?? MAX_TXN_OPS;
    // A pass over a large backlog is expensive (every pending VM against every host): the
    // next one waits as long as this one took (at most 1 s), so a stream of creates cannot
    // keep the process busy placing.
    this.loop = new PassLoop({
      pass: () => this.placePending(),
      what: "placement",
      logger: d.logger,
      // The time the pass spent deciding (its CPU), not its wall time: that is mostly
      // waiting for etcd, and waiting as long again halved placement under load.
      nextDelayMs: (retry) => (retry ? 100 : Math.min(1000, Math.round(this.busyMs))),
    });
  }

  start(): void {
    const c = this.d.cluster;
    const index = () => {
      this.unplaced.clear();
      for (const e of c.vms.values()) if (isUnplaced(e.value)) this.unplaced.set(e.key, e);
    };
    index();
    this.unsubs.push(
      c.vms.onResync(() => {
        index();
        this.kick();
      }),
      c.vms.onChange((ch) => {
        if (ch.type === "put" && isUnplaced(ch.entry.value)) this.unplaced.set(ch.entry.key, ch.entry);
        else this.unplaced.delete(ch.type === "put" ? ch.entry.key : ch.key);
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
   * them all, planPlacementTxns groups the decisions into transactions (a
   * host's later chunks after its earlier ones) and those are committed
   * several at a time. Returns true if a commit lost a race.
   */
  async placePending(): Promise<boolean> {
    const c = this.d.cluster;
    let busy = 0;
    let t = performance.now();
    for (const [id, rev] of this.placedAhead) {
      const e = c.vms.get(keys.vm(id));
      if (!e || e.modRevision >= rev) this.placedAhead.delete(id);
    }
    const waiting = [...this.unplaced.values()]
      .filter((e) => !this.placedAhead.has(e.value.id))
      .sort((a, b) => a.createRevision - b.createRevision);
    if (waiting.length === 0) {
      this.busyMs = performance.now() - t;
      return false;
    }
    // At most PASS_MAX_VMS per pass (the rest next pass), decided SLICE_VMS at
    // a time with a yield between, so the etcd calls and sessions of the whole
    // coordinator do not wait behind a large batch. One BatchScheduler across
    // the slices: the same decisions as one batch, the host views copied once.
    const pending = waiting.slice(0, PASS_MAX_VMS);
    this.stats.passes = (this.stats.passes ?? 0) + 1;
    if (waiting.length > pending.length) this.loop.again();
    // Placements at create change allocations under this pass: those in flight now are not in
    // its views, those made while it decides were not either. Its decisions for those hosts are
    // dropped (decided again next pass).
    this.createdOn.clear();
    for (const [hostId, w] of this.writing) if (w.create > 0) this.createdOn.add(hostId);
    // One batch over the host views (copied once), fed SLICE_VMS at a time.
    const batch = new BatchScheduler(this.views(), this.d.policy);
    const decisions: Decision[] = [];
    for (let i = 0; i < pending.length; i += SLICE_VMS) {
      if (i > 0) {
        busy += performance.now() - t;
        await new Promise((r) => setImmediate(r));
        t = performance.now();
      }
      if (this.loop.stopped) return false;
      for (const e of pending.slice(i, i + SLICE_VMS)) decisions.push(batch.decide(requestOf(e.value)));
    }
    const items: PlacementItem[] = [];
    const unplaceable: { entry: Entry<Vm>; reason: string }[] = [];
    for (const [i, decision] of decisions.entries()) {
      const entry = pending[i]!;
      if (!decision.placed) unplaceable.push({ entry, reason: decision.reason });
      else if (this.createdOn.has(decision.hostId)) {
        this.loop.again();
      } else {
        const host = c.hosts.get(keys.host(decision.hostId))?.value;
        if (host) items.push({ entry, hostId: host.id, hostName: host.name });
      }
    }
    const allocOf = (id: string) => {
      const a = this.allocAhead.get(id);
      return a ?? c.allocationOf(id);
    };
    const plan = planPlacementTxns(items, allocOf, this.d.clock.now(), this.maxOps);
    this.busyMs = busy + (performance.now() - t);
    const { lostRace, lostKeys } = await this.commit(plan.txns);
    if (unplaceable.length > 0 && !this.loop.stopped) {
      this.stats.attempts += unplaceable.length;
      this.stats.unplaceable += unplaceable.length;
      await this.noteUnplaceable(unplaceable);
    }
    // After a lost race the next pass plans from what etcd holds now: wait for the informers
    // to show it (and forget what was written ahead). Otherwise the next pass starts at once.
    if (lostRace) {
      this.placedAhead.clear();
      this.allocAhead.clear();
      // Wait for the informers to show what was raced on (not etcd's latest revision: finding 15a).
      this.stats.staleWaits = (this.stats.staleWaits ?? 0) + (await c.catchUp(this.d.store, lostKeys));
    }
    return lostRace;
  }

  /**
   * Commits a plan, COMMIT_CONCURRENCY transactions at a time, each once the
   * ones it comes `after` committed; one whose predecessor failed is not sent
   * (it would fail: the allocation it expects was never written). Returns
   * whether any transaction lost a race, and the keys those compared.
   */
  private async commit(txns: PlannedTxn[]): Promise<{ lostRace: boolean; lostKeys: string[] }> {
    const state = txns.map(() => "waiting" as "waiting" | "sent" | "ok" | "failed");
    let lostRace = false;
    /** What the transactions that lost compared. */
    const lostKeys: string[] = [];
    let error: unknown;
    let wake: (() => void) | undefined;
    const ready = (i: number): "yes" | "no" | "never" => {
      for (const j of txns[i]!.after) {
        if (state[j] === "failed") return "never";
        if (state[j] !== "ok") return "no";
      }
      return "yes";
    };
    const nextTxn = (): number | "wait" | "done" => {
      let open = false;
      for (let i = 0; i < txns.length; i++) {
        if (state[i] !== "waiting") {
          if (state[i] === "sent") open = true;
          continue;
        }
        const r = ready(i);
        if (r === "yes") return i;
        if (r === "never") {
          state[i] = "failed";
          lostRace = true;
          continue;
        }
        open = true;
      }
      return open ? "wait" : "done";
    };
    const worker = async (): Promise<void> => {
      for (;;) {
        if (this.loop.stopped || error !== undefined) return;
        const i = nextTxn();
        if (i === "done") return;
        if (i === "wait") {
          await new Promise<void>((r) => {
            const prev = wake;
            wake = () => {
              prev?.();
              r();
            };
          });
          continue;
        }
        const t = txns[i]!;
        state[i] = "sent";
        this.stats.attempts += t.vmIds.length;
        try {
          const r = await this.d.store.txn(t.compares, t.ops);
          this.stats.txns = (this.stats.txns ?? 0) + 1;
          if (r.succeeded) {
            state[i] = "ok";
            this.stats.placed += t.vmIds.length;
            for (const id of t.vmIds) this.placedAhead.set(id, r.revision);
            for (const [hostId, record] of t.allocs) this.allocAhead.set(hostId, { record, modRevision: r.revision });
          } else {
            // Someone else changed one of these VMs or hosts: decide them again with fresh state.
            state[i] = "failed";
            this.stats.conflicts++;
            lostRace = true;
            for (const cmp of t.compares) lostKeys.push(cmp.key);
          }
        } catch (e) {
          // The store call failed (etcd unavailable): send nothing more; the pass fails and is retried.
          state[i] = "failed";
          error ??= e;
        } finally {
          const w = wake;
          wake = undefined;
          w?.();
        }
      }
    };
    const hosts = new Set(txns.flatMap((t) => [...t.allocs.keys()]));
    for (const h of hosts) this.markWriting(h, "pass", 1);
    try {
      await Promise.all(Array.from({ length: Math.min(COMMIT_CONCURRENCY, txns.length) }, worker));
    } finally {
      for (const h of hosts) this.markWriting(h, "pass", -1);
    }
    if (error !== undefined) throw error;
    return { lostRace, lostKeys };
  }

  /** Allocations written ahead and since seen by the informer: its view has them. */
  private pruneAhead(): void {
    const c = this.d.cluster;
    for (const [hostId, a] of this.allocAhead) if (c.allocationOf(hostId).modRevision >= a.modRevision) this.allocAhead.delete(hostId);
  }

  /** A host's view as the scheduler should see it: the informer's, with the allocation this controller wrote ahead of it. */
  private withAhead(v: HostView): HostView {
    const a = this.allocAhead.get(v.id);
    return a ? viewWithAllocation(v, a.record) : v;
  }

  /** The host views as the scheduler should see them (withAhead). */
  private views(list?: readonly HostView[]): readonly HostView[] {
    this.pruneAhead();
    const views = list ?? this.d.cluster.hostViews();
    if (this.allocAhead.size === 0) return views;
    return views.map((v) => this.withAhead(v));
  }

  /**
   * The batch placeAtCreate decides with, kept across creates: told only
   * which host views changed since the last call (the informers' and this
   * controller's own allocations written ahead), so a create reads a few
   * hosts, not all of them.
   */
  private createBatchNow(): BatchScheduler {
    const c = this.d.cluster;
    const { list, mark, changed } = c.hostViewsSince(this.createMark);
    this.createMark = mark;
    if (this.createBatch === undefined || changed === undefined) {
      this.createBatch = new BatchScheduler(this.views(list), this.d.policy);
    } else {
      this.pruneAhead();
      const updates = new Map<number, HostView>();
      for (const i of changed) updates.set(i, this.withAhead(list[i]!));
      // Hosts shown with an allocation written ahead, now or at the last call: their views differ from the list's.
      for (const id of [...this.createAhead, ...this.allocAhead.keys()]) {
        const i = c.hostViewIndex(id);
        if (i !== undefined) updates.set(i, this.withAhead(list[i]!));
      }
      this.createBatch.update(updates);
    }
    this.createAhead = new Set(this.allocAhead.keys());
    return this.createBatch;
  }

  private markWriting(hostId: string, by: "pass" | "create", delta: 1 | -1): void {
    const w = this.writing.get(hostId) ?? { pass: 0, create: 0 };
    w[by] += delta;
    if (w.pass === 0 && w.create === 0) this.writing.delete(hostId);
    else this.writing.set(hostId, w);
  }

  /**
   * Decides hosts for VMs being created, for their create transaction to
   * place them too: one transaction instead of two, and no wait for the
   * watch and a pass before a VM reaches its host. The same scheduler and
   * policy as a pass, on the same views; a host whose allocation a pass is
   * writing is left out (the next best is taken). What this does not place
   * (nothing fits, no room left in the transaction, this controller
   * stopped) is created unplaced and placed by a pass as before, which also
   * writes why it waits. Synchronous: nothing else decides in between.
   * The transaction compares each host's allocation as read (or as this
   * controller last wrote it), that the host exists, and this leader's term.
   */
  placeAtCreate(vms: readonly Vm[], room: { ops: number; compares: number }): CreatePlacement | undefined {
    if (this.loop.stopped || vms.length === 0) return undefined;
    const c = this.d.cluster;
    const batch = this.createBatchNow();
    const skip = new Set(this.writing.keys());
    const fence = this.d.fence !== undefined ? [fenceCompare(this.d.fence)] : [];
    let ops = 0;
    let compares = fence.length;
    const byHost = new Map<string, { hostName: string; vms: Vm[] }>();
    for (const vm of vms) {
      const d = batch.decide(requestOf(vm), skip);
      if (!d.placed || skip.has(d.hostId)) continue;
      const host = c.hosts.get(keys.host(d.hostId))?.value;
      if (!host) continue;
      const known = byHost.get(host.id);
      // Per VM one put (its assignment; its record replaces the create's); per host two compares and one put.
      const addOps = 1 + (known ? 0 : 1);
      const addCompares = known ? 0 : 2;
      if (ops + addOps > room.ops || compares + addCompares > room.compares) break;
      ops += addOps;
      compares += addCompares;
      if (known) known.vms.push(vm);
      else byHost.set(host.id, { hostName: host.name, vms: [vm] });
    }
    if (byHost.size === 0) return undefined;
    const now = this.d.clock.now();
    const out: CreatePlacement = { compares: [...fence], ops: [], placed: new Map(), settle: () => undefined };
    const allocs = new Map<string, AllocationRecord>();
    for (const [hostId, { hostName, vms: list }] of byHost) {
      const read = this.allocAhead.get(hostId) ?? c.allocationOf(hostId);
      let record = read.record;
      out.compares.push(unchanged(keys.alloc(hostId), read), hostExists(hostId));
      for (const vm of list) {
        record = addAlloc(record, vm);
        out.placed.set(vm.id, placedOn(vm, hostId, hostName, now));
        out.ops.push({ type: "put", key: keys.assign(hostId, vm.id), value: Buffer.from(vm.id) });
      }
      out.ops.push({ type: "put", key: keys.alloc(hostId), value: enc(AllocationRecord, record!) });
      allocs.set(hostId, record!);
      this.markWriting(hostId, "create", 1);
      this.createdOn.add(hostId);
    }
    let settled = false;
    out.settle = (revision) => {
      if (settled) return;
      settled = true;
      this.stats.attempts += out.placed.size;
      if (revision !== undefined) {
        this.stats.placed += out.placed.size;
        // Before the hosts are free again: whoever decides next sees these allocations.
        for (const [hostId, record] of allocs) this.allocAhead.set(hostId, { record, modRevision: revision });
      } else this.stats.conflicts++;
      for (const hostId of allocs.keys()) this.markWriting(hostId, "create", -1);
      // A pass may have left VMs for these hosts to the next one.
      this.kick();
    };
    return out;
  }

  /**
   * Shows each VM why it waits (its status reason), for the VMs whose reason
   * changed: several VMs per transaction, each compared unchanged since read
   * (one that moved meanwhile is skipped, the next pass decides it again).
   * With hosts joining one by one the counts in the reasons change on every
   * pass: one transaction per VM made a large backlog wait seconds for these
   * writes before the first placement.
   */
  private async noteUnplaceable(list: { entry: { value: Vm; modRevision: number }; reason: string }[]): Promise<void> {
    const changed = list.filter((u) => u.entry.value.status?.reason !== u.reason);
    const now = this.d.clock.now();
    const per = Math.max(1, Math.floor((this.maxOps - 1) / 2));
    const chunks: (typeof changed)[] = [];
    for (let i = 0; i < changed.length; i += per) chunks.push(changed.slice(i, i + per));
    const write = async (chunk: typeof changed): Promise<void> => {
      const writes = chunk.map((u) => pendingReasonWrite({ vm: u.entry.value, modRevision: u.entry.modRevision }, u.reason, now));
      const r = await this.d.store.txn(
        writes.map((w) => w.compare),
        writes.map((w) => w.op),
      );
      // One of them changed (placed elsewhere, destroyed): write the others one by one.
      if (!r.succeeded && chunk.length > 1) for (const u of chunk) await write([u]);
    };
    let next = 0;
    await Promise.all(
      Array.from({ length: Math.min(COMMIT_CONCURRENCY, chunks.length) }, async () => {
        while (next < chunks.length && !this.loop.stopped) await write(chunks[next++]!);
      }),
    );
  }

}
