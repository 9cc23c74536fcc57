// The leader places VMs in their create transaction (PlacementController.
// placeAtCreate, wired into VmRepo as the coordinator does). Its passes and
// the creates decide on the same hosts: neither may count on an allocation the
// other changed under it. Deterministic races on the in-memory store (the
// same Store contract as etcd); test/integration/place-at-create.test.ts runs
// creates and passes against each other on a real etcd.
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { PlacementController } from "../../coordinator/controllers/placement.js";
import { ClusterState } from "../../coordinator/state/cluster.js";
import { keys } from "../../coordinator/state/keys.js";
import { VmRepo } from "../../coordinator/state/vm-repo.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import type { Store } from "../../coordinator/store/store.js";
import { auditKey } from "../../coordinator/audit-log.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { checkPlacementInvariants, seedHosts } from "../helpers/placement.js";
import { until } from "../helpers/until.js";

const clock = { now: () => new Date() };
const limits = { max_vms_per_user: 1000, max_total_vms: 1000, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };
const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0).reverse()) await s();
});


async function addBacklog(store: Store, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const vm = Vm.fromPartial({ id: `b${i}`, name: `b${i}`, owner: "t1", spec: { vcpus: 1, memoryMb: 64, diskGb: 1, driver: "" }, status: { phase: VmPhase.VM_PHASE_PENDING } });
    await store.put(keys.vm(vm.id), Vm.encode(vm).finish());
  }
}

function setup(store: Store, fence?: number) {
  const cluster = new ClusterState(store, silentLogger());
  const ctl = new PlacementController({ store, cluster, policy: "spread", logger: silentLogger(), clock, ...(fence !== undefined ? { fence } : {}) });
  let n = 0;
  const repo = new VmRepo({ store, clock, newId: () => `c${String(++n).padStart(15, "0")}`, auditKey, placeAtCreate: (l, r) => ctl.placeAtCreate(l, r) });
  stops.push(async () => {
    await ctl.stop();
    await cluster.stop();
  });
  return { cluster, ctl, repo };
}

/** One host of `vcpus`, the cluster and the controller started. */
async function started(vcpus: number, fence?: (store: MemoryStore) => Promise<number>) {
  const store = new MemoryStore();
  const [h] = await seedHosts(store, 1, vcpus);
  const parts = setup(store, fence ? await fence(store) : undefined);
  await parts.cluster.start();
  parts.ctl.start();
  return { store, h: h!, ...parts };
}

const spec = () => ({ ...normalizeVmSpec(undefined), vcpus: 1, memoryMb: 64, diskGb: 1 });

async function allocOf(store: Store, hostId: string): Promise<AllocationRecord | undefined> {
  const kv = await store.get(keys.alloc(hostId));
  return kv ? AllocationRecord.decode(kv.value) : undefined;
}

describe("placement in the create transaction", () => {
  it("a create on the leader is placed in its own transaction: one write, the allocation and the assignment with it", async () => {
    const { store, h, ctl, repo } = await started(4);
    const rev0 = await store.revision();
    const created = await repo.create("t1", "web", spec(), limits, { peer: "test" });
    expect(await store.revision()).toBe(rev0 + 1);
    expect(created.vm.status).toMatchObject({ hostId: h, hostName: "host-0", phase: VmPhase.VM_PHASE_PENDING, reason: "" });
    expect(Vm.decode((await store.get(keys.vm(created.vm.id)))!.value).status?.hostId).toBe(h);
    expect(Buffer.from((await store.get(keys.assign(h, created.vm.id)))!.value).toString()).toBe(created.vm.id);
    expect(await allocOf(store, h)).toMatchObject({ vmCount: 1, allocated: { vcpus: 1, memoryMb: 64, diskGb: 1 } });
    expect(ctl.stats).toMatchObject({ placed: 1, txns: 0, conflicts: 0 });
  });

  it("a create decides with the allocations earlier creates wrote, before the informer shows them", async () => {
    const store = new MemoryStore();
    const hostIds = await seedHosts(store, 2, 4);
    const { cluster, ctl } = setup(store);
    await cluster.start();
    ctl.start();
    const vm = (id: string) => Vm.fromPartial({ id, name: id, owner: "t1", spec: { vcpus: 1, memoryMb: 64, diskGb: 1, driver: "" }, status: { phase: VmPhase.VM_PHASE_PENDING } });
    const chosen: string[] = [];
    for (let i = 0; i < 6; i++) {
      const p = ctl.placeAtCreate([vm(`v${i}`)], { ops: 100, compares: 100 })!;
      chosen.push([...p.placed.values()][0]!.status!.hostId);
      // Written, at a revision the informer has not reached (nothing was written here at all).
      p.settle(1000 + i);
    }
    // Spread: each create sees the ones before it, so the hosts alternate; on the informer's views alone every VM went to the first host.
    expect(chosen.filter((h) => h === hostIds[0])).toHaveLength(3);
    expect(chosen.filter((h) => h === hostIds[1])).toHaveLength(3);
  });

  it("a VM no host can take is created unplaced, and a pass writes why it waits", async () => {
    const { store, h, repo } = await started(1);
    const created = await repo.create("t1", "big", { ...spec(), vcpus: 2 }, limits, { peer: "test" });
    expect(created.vm.status?.hostId).toBe("");
    await until(async () => /no host/.test(Vm.decode((await store.get(keys.vm(created.vm.id)))!.value).status?.reason ?? ""), "the reason");
    expect(await store.get(keys.alloc(h))).toBeUndefined();
  });

  it("a placement that loses its race (the leader's term ended) still creates the VM, unplaced; a pass places it", async () => {
    // The fence the controller was given is not the leader key's create revision.
    const { store, h, ctl, repo } = await started(4, async (s) => (await s.put("leader/coordinator", Buffer.from("other"))) + 100);
    const created = await repo.create("t1", "web", spec(), limits, { peer: "test" });
    expect(created.vm.status?.hostId).toBe("");
    await until(async () => Vm.decode((await store.get(keys.vm(created.vm.id)))!.value).status?.hostId === h, "the pass to place it");
    expect(await allocOf(store, h)).toMatchObject({ vmCount: 1 });
    expect(ctl.stats).toMatchObject({ placed: 1, conflicts: 1 });
  });

  it("a pass that starts while a create's placement is in flight leaves that host to it: no race lost", async () => {
    const mem = new MemoryStore();
    const h = (await seedHosts(mem, 1, 4))[0]!;
    // The create's transaction (it writes a name) is held until released.
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let holding = false;
    const store: Store = Object.assign(Object.create(mem) as Store, {
      txn: async (...a: Parameters<Store["txn"]>) => {
        if (a[1].some((o) => o.type === "put" && o.key.startsWith("names/"))) {
          holding = true;
          await held;
        }
        return mem.txn(...a);
      },
    });
    const { cluster, ctl, repo } = setup(store);
    await cluster.start();
    ctl.start();
    const created = repo.create("t1", "web", spec(), limits, { peer: "test" });
    await until(() => holding, "the create's transaction sent, its placement decided");
    await addBacklog(mem, 2);
    await until(() => (ctl.stats.passes ?? 0) >= 1, "a pass over the backlog");
    release();
    expect((await created).vm.status?.hostId).toBe(h);
    await until(async () => ((await allocOf(mem, h))?.vmCount ?? 0) === 3, "the backlog placed after it");
    expect(ctl.stats).toMatchObject({ placed: 3, conflicts: 0 });
    expect(await checkPlacementInvariants(mem, [h], 4)).toEqual({ placed: 3, unplaced: 0 });
  });

  it("a create placed while a pass decides (between its slices) is not counted twice: no host over capacity", async () => {
    const store = new MemoryStore();
    // One host for 101 VMs; a backlog of 101: the pass decides 100, yields, decides one more.
    const h = (await seedHosts(store, 1, 101))[0]!;
    await addBacklog(store, 101);
    const { cluster, ctl, repo } = setup(store);
    await cluster.start();
    // The pass's first look at the hosts queues a create that runs in its first yield (the
    // in-memory store answers within the same turn): placed at create, committed, settled
    // before the pass decides its last VM and plans.
    let created: Promise<unknown> | undefined;
    const views = cluster.hostViews.bind(cluster);
    cluster.hostViews = () => {
      if (!created) setImmediate(() => (created = repo.create("t1", "late", spec(), limits, { peer: "test" })));
      created ??= Promise.resolve();
      return views();
    };
    ctl.start();
    await until(() => ctl.stats.placed + ctl.stats.unplaceable >= 102, "every VM decided");
    await created;
    await until(async () => ((await allocOf(store, h))?.vmCount ?? 0) >= 101, "the host full");
    expect(await checkPlacementInvariants(store, [h], 101)).toEqual({ placed: 101, unplaced: 1 });
    const vms = (await store.list(keys.vmsPrefix)).kvs.map((kv) => Vm.decode(kv.value));
    expect(vms.find((v) => v.name === "late")?.status?.hostId).toBe(h);
  });
});
