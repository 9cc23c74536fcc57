// Batched placement on a real etcd: the placement controller commits several
// VMs per transaction, and still never places a VM twice nor over-commits a
// host, also when two controllers race on the same cluster (as a deposed and
// a new leader could for a moment).
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { PlacementController } from "../../coordinator/controllers/placement.js";
import { ClusterState } from "../../coordinator/state/cluster.js";
import { keys } from "../../coordinator/state/keys.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { checkPlacementInvariants, seedHosts } from "../helpers/placement.js";
import { until } from "../helpers/until.js";

let etcd: TestEtcd;
const clock = { now: () => new Date() };

beforeAll(async () => {
  etcd = await startTestEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});


async function addVms(store: EtcdStore, n: number, tag: string): Promise<void> {
  for (let i = 0; i < n; i++) {
    const vm = Vm.fromPartial({
      id: `${tag}${i}`,
      name: `${tag}${i}`,
      owner: "t1",
      spec: { vcpus: 1, memoryMb: 64, diskGb: 1, driver: "", network: "isolated" },
      status: { phase: VmPhase.VM_PHASE_PENDING },
    });
    await store.put(keys.vm(vm.id), Vm.encode(vm).finish());
  }
}

describe("batched placement on real etcd", () => {
  it("places a backlog in far fewer transactions than VMs, each VM once, no host over capacity", async () => {
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/pb-${randomUUID()}/` });
    const cluster = new ClusterState(store, silentLogger());
    let ctl: PlacementController | undefined;
    try {
      const hostIds = await seedHosts(store, 20, 8);
      await addVms(store, 150, "a");
      await cluster.start();
      const rev0 = await store.revision();
      ctl = new PlacementController({ store, cluster, policy: "spread", logger: silentLogger(), clock });
      ctl.start();
      await until(() => ctl!.stats.placed === 150, "150 placements");
      const writes = (await store.revision()) - rev0;
      const r = await checkPlacementInvariants(store, hostIds, 8);
      expect(r).toEqual({ placed: 150, unplaced: 0 });
      expect(ctl.stats.txns).toBeLessThan(20);
      expect(writes).toBeLessThan(20);
      expect(ctl.stats.conflicts).toBe(0);
    } finally {
      await ctl?.stop();
      await cluster.stop();
      await store.close();
    }
  });

  it("a host's VMs beyond one transaction are chained in one pass", async () => {
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/pb-${randomUUID()}/` });
    const cluster = new ClusterState(store, silentLogger());
    let ctl: PlacementController | undefined;
    try {
      // One host; at most 3 VMs per transaction (7 operations): 30 VMs are a chain of 10.
      const hostIds = await seedHosts(store, 1, 40);
      await addVms(store, 30, "c");
      await cluster.start();
      ctl = new PlacementController({ store, cluster, policy: "spread", logger: silentLogger(), clock, maxTxnOps: 7 });
      ctl.start();
      await until(() => ctl!.stats.placed === 30, "30 placements");
      expect(await checkPlacementInvariants(store, hostIds, 40)).toEqual({ placed: 30, unplaced: 0 });
      expect(ctl.stats).toMatchObject({ passes: 1, txns: 10, conflicts: 0 });
    } finally {
      await ctl?.stop();
      await cluster.stop();
      await store.close();
    }
  });

  it("when a chain's first transaction loses a race, its later ones are not sent; the next pass places them", async () => {
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/pb-${randomUUID()}/` });
    const cluster = new ClusterState(store, silentLogger());
    let ctl: PlacementController | undefined;
    try {
      const hostIds = await seedHosts(store, 1, 40);
      const hostId = hostIds[0]!;
      await addVms(store, 12, "r");
      await cluster.start();
      // Another writer touches the host's allocation (same content, new revision) just before
      // the first placement transaction reaches etcd.
      let raced = false;
      const racing = new Proxy(store, {
        get(target, prop, receiver) {
          if (prop === "txn") {
            return async (...args: Parameters<EtcdStore["txn"]>) => {
              if (!raced && args[1].some((o) => o.type === "put" && o.key.startsWith(keys.assignPrefix(hostId)))) {
                raced = true;
                const kv = await target.get(keys.alloc(hostId));
                await target.put(keys.alloc(hostId), kv?.value ?? AllocationRecord.encode(AllocationRecord.fromPartial({})).finish());
              }
              return target.txn(...args);
            };
          }
          const v = Reflect.get(target, prop, receiver) as unknown;
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
        },
      });
      ctl = new PlacementController({ store: racing, cluster, policy: "spread", logger: silentLogger(), clock, maxTxnOps: 7 });
      ctl.start();
      await until(() => ctl!.stats.placed === 12, "12 placements");
      expect(raced).toBe(true);
      expect(await checkPlacementInvariants(store, hostIds, 40)).toEqual({ placed: 12, unplaced: 0 });
      // Pass 1: the first of 4 chained transactions fails and the other 3 are never sent; pass 2: 4 commit.
      // Before pass 2 the informers show the allocation raced on: no wait ran out (it used to wait
      // for etcd's latest revision, which the VM informer never reached: the full 5 s).
      expect(ctl.stats).toMatchObject({ passes: 2, txns: 5, conflicts: 1, placed: 12, staleWaits: 0 });
    } finally {
      await ctl?.stop();
      await cluster.stop();
      await store.close();
    }
  });

  it("two controllers racing: no VM placed twice, capacity never exceeded, the overflow stays unplaced", async () => {
    const prefix = `/pb-${randomUUID()}/`;
    const stores = await Promise.all([0, 1].map(() => createEtcdStore({ endpoints: etcd.endpoints, prefix })));
    const clusters = stores.map((s) => new ClusterState(s, silentLogger()));
    const ctls: PlacementController[] = [];
    try {
      // 12 hosts x 5 vCPUs = 60 slots for 90 VMs of 1 vCPU; small transactions so they interleave.
      const hostIds = await seedHosts(stores[0]!, 12, 5);
      await Promise.all(clusters.map((c) => c.start()));
      for (const [i, c] of clusters.entries()) {
        const ctl = new PlacementController({ store: stores[i]!, cluster: c, policy: i === 0 ? "spread" : "binpack", logger: silentLogger(), clock, maxTxnOps: 7 });
        ctl.start();
        ctls.push(ctl);
      }
      await Promise.all([addVms(stores[0]!, 45, "x"), addVms(stores[1]!, 45, "y")]);
      await until(() => ctls[0]!.stats.placed + ctls[1]!.stats.placed === 60, "all 60 slots taken");
      await new Promise((r) => setTimeout(r, 500));
      expect(ctls[0]!.stats.placed + ctls[1]!.stats.placed).toBe(60);
      const r = await checkPlacementInvariants(stores[0]!, hostIds, 5);
      expect(r).toEqual({ placed: 60, unplaced: 30 });
      // Each waiting VM shows why; a reason write that lost a race with the other controller is
      // written again by a later pass, so under load it may come after the last placement.
      const unplaced = async () => (await stores[0]!.list(keys.vmsPrefix)).kvs.map((kv) => Vm.decode(kv.value)).filter((v) => !v.status?.hostId);
      await until(async () => (await unplaced()).every((v) => /no host/.test(v.status?.reason ?? "")), "every waiting VM to show why", 10_000);
      for (const vm of await unplaced()) expect(vm.status?.reason).toMatch(/no host/);
    } finally {
      for (const c of ctls) await c.stop();
      for (const c of clusters) await c.stop();
      for (const s of stores) await s.close();
    }
  });

  it("with a slow watch, a pass starts at once from what the last one wrote: no VM decided twice, no stale allocation, no host over capacity", async () => {
    const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/pb-${randomUUID()}/` });
    // The informers see every change 300 ms late (an overloaded coordinator's watch).
    const slow = new Proxy(store, {
      get(target, prop, receiver) {
        if (prop === "watch") {
          return (prefix: string, o: Parameters<EtcdStore["watch"]>[1]) =>
            target.watch(prefix, { ...o, onEvents: (evs) => void setTimeout(() => o.onEvents(evs), 300) });
        }
        const v = Reflect.get(target, prop, receiver) as unknown;
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
      },
    });
    const cluster = new ClusterState(slow, silentLogger());
    let ctl: PlacementController | undefined;
    try {
      // 4 hosts x 5 vCPUs = 20 slots; 30 VMs in three waves while the earlier ones' placements are still unseen.
      const hostIds = await seedHosts(store, 4, 5);
      await cluster.start();
      ctl = new PlacementController({ store: slow, cluster, policy: "binpack", logger: silentLogger(), clock, maxTxnOps: 7 });
      ctl.start();
      for (const w of ["w1-", "w2-", "w3-"]) {
        await addVms(store, 10, w);
        await new Promise((r) => setTimeout(r, 400));
      }
      await until(() => ctl!.stats.placed === 20, "20 placements");
      await new Promise((r) => setTimeout(r, 1000));
      expect(await checkPlacementInvariants(store, hostIds, 5)).toEqual({ placed: 20, unplaced: 10 });
      expect(ctl.stats).toMatchObject({ placed: 20, conflicts: 0 });
    } finally {
      await ctl?.stop();
      await cluster.stop();
      await store.close();
    }
  });
});
