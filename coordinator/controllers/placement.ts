// The placement controller: whenever VMs wait or capacity changes, ask the
// pure scheduler for decisions and commit each one in a transaction that
// fails if the VM or the host's allocation moved since they were read.
import type { Logger } from "pino";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";
import type { Store } from "../store/store.js";
import { scheduleBatch } from "../scheduler/index.js";
import type { Policy, VmRequest } from "../scheduler/types.js";
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
  conflicts: number;
  unplaceable: number;
}

export class PlacementController {
  private running = false;
  private again = false;
  private stopped = false;
  private timer?: NodeJS.Timeout;
  private readonly unsubs: (() => void)[] = [];
  readonly stats: PlacementStats = { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0 };

  constructor(
    private readonly d: { store: Store; cluster: ClusterState; policy: Policy; logger: Logger; clock: Clock },
  ) {}

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
    this.stopped = true;
    this.unsubs.forEach((u) => u());
    if (this.timer) clearTimeout(this.timer);
    while (this.running) await new Promise((r) => setTimeout(r, 10));
  }

  /** Runs a pass soon; passes never overlap, and a kick during a pass runs one more. */
  kick(delayMs = 0): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.pass();
    }, delayMs);
  }

  private async pass(): Promise<void> {
    this.running = true;
    let retry = false;
    try {
      retry = await this.placePending();
    } catch (err) {
      this.d.logger.warn({ err }, "placement pass failed");
      retry = true;
    } finally {
      this.running = false;
    }
    if (this.again || retry) {
      this.again = false;
      this.kick(retry ? 100 : 0);
    }
  }

  /** One pass over every unplaced VM, oldest first. Returns true if a commit lost a race. */
  async placePending(): Promise<boolean> {
    const c = this.d.cluster;
    const pending = c.vms
      .values()
      .filter((e) => isUnplaced(e.value))
      .sort((a, b) => a.createRevision - b.createRevision);
    if (pending.length === 0) return false;
    const { decisions } = scheduleBatch(c.hostViews(), pending.map((e) => requestOf(e.value)), this.d.policy);
    // Allocation records as this pass has written them, so consecutive
    // placements on one host compare against our own last write.
    const allocs = new Map<string, { record: AllocationRecord | undefined; modRevision: number }>();
    let lostRace = false;
    for (const [i, decision] of decisions.entries()) {
      if (this.stopped) break;
      const entry = pending[i]!;
      const vm = entry.value;
      this.stats.attempts++;
      if (!decision.placed) {
        this.stats.unplaceable++;
        await this.noteUnplaceable(entry, decision.reason);
        continue;
      }
      const host = c.hostById(decision.hostId);
      if (!host) continue;
      const alloc = allocs.get(host.id) ?? c.allocationOf(host.id);
      const next: Vm = {
        ...vm,
        status: { ...vm.status!, phase: VmPhase.VM_PHASE_PENDING, hostId: host.id, hostName: host.name, reason: "", updatedAt: this.d.clock.now() },
      };
      const newAlloc = addAlloc(alloc.record, vm);
      const r = await this.d.store.txn(
        [unchanged(keys.vm(vm.id), entry), unchanged(keys.alloc(host.id), alloc), { key: keys.host(host.id), target: "create", op: ">", value: 0 }],
        [
          { type: "put", key: keys.vm(vm.id), value: enc(Vm, next) },
          { type: "put", key: keys.assign(host.id, vm.id), value: Buffer.from(vm.id) },
          { type: "put", key: keys.alloc(host.id), value: enc(AllocationRecord, newAlloc) },
        ],
      );
      if (r.succeeded) {
        this.stats.placed++;
        allocs.set(host.id, { record: newAlloc, modRevision: r.revision });
      } else {
        // Someone else changed the VM or the host: decide again with fresh state.
        this.stats.conflicts++;
        lostRace = true;
        break;
      }
    }
    if (lostRace) {
      const rev = await this.d.store.revision();
      await Promise.all([c.vms.waitFor(rev), c.alloc.waitFor(rev)]).catch(() => undefined);
    }
    return lostRace;
  }

  private async noteUnplaceable(entry: { value: Vm; modRevision: number }, reason: string): Promise<void> {
    const vm = entry.value;
    if (vm.status?.reason === reason) return;
    const next: Vm = { ...vm, status: { ...vm.status!, reason, updatedAt: this.d.clock.now() } };
    await this.d.store.txn([unchanged(keys.vm(vm.id), entry)], [{ type: "put", key: keys.vm(vm.id), value: enc(Vm, next) }]);
  }
}
