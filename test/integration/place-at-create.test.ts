// Placement in the create transaction on a real etcd, as the coordinator wires
// it (the audit chain store, the leader's fence): creates from many callers
// at once while the controller's passes place a backlog on the same small
// hosts. Whoever decides first, no VM is placed twice, no host goes over
// capacity, and every create is answered with the VM as stored.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { auditKey } from "../../coordinator/audit-log.js";
import { AuditChainStore } from "../../coordinator/auth/audit-chain-store.js";
import { PlacementController } from "../../coordinator/controllers/placement.js";
import { FencedStore, LEADER_KEY } from "../../coordinator/ha/leader.js";
import { ClusterState } from "../../coordinator/state/cluster.js";
import { keys } from "../../coordinator/state/keys.js";
import { VmRepo, newVmId, type StoredVm } from "../../coordinator/state/vm-repo.js";
import { createEtcdStore } from "../../coordinator/store/index.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { checkPlacementInvariants, seedHosts } from "../helpers/placement.js";
import { until } from "../helpers/until.js";

let etcd: TestEtcd;
const clock = { now: () => new Date() };
const limits = { max_vms_per_user: 1000, max_total_vms: 1000, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };

beforeAll(async () => {
  etcd = await startTestEtcd();
});
afterAll(async () => {
  await etcd?.stop();
});


describe("placement in the create transaction, real etcd", () => {
  it("creates racing passes over a backlog on full hosts: each VM once, no host over capacity, answers as stored", async () => {
    const raw = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/pac-${randomUUID()}/` });
    const store = new AuditChainStore(raw);
    const cluster = new ClusterState(store, silentLogger());
    let ctl: PlacementController | undefined;
    try {
      // 6 hosts x 4 vCPUs = 24 slots for 12 backlog VMs and 24 creates of 1 vCPU each.
      const hostIds = await seedHosts(store, 6, 4);
      const fence = await raw.put(LEADER_KEY, Buffer.from("me"));
      const fenced = new FencedStore(store, fence, () => true, () => undefined);
      await cluster.start();
      ctl = new PlacementController({ store: fenced, fence, cluster, policy: "binpack", logger: silentLogger(), clock, maxTxnOps: 7 });
      const placer = ctl;
      const repo = new VmRepo({ store, clock, newId: newVmId, auditKey, placeAtCreate: (l, r) => placer.placeAtCreate(l, r) });
      ctl.start();
      const spec = { ...normalizeVmSpec(undefined), vcpus: 1, memoryMb: 64, diskGb: 1 };
      // Waves of creates, a backlog written straight to the store between them (a pass each).
      const answers: StoredVm[] = [];
      for (let w = 0; w < 4; w++) {
        for (let i = 0; i < 3; i++) {
          const vm = Vm.fromPartial({ id: `b${w}${i}`.padEnd(16, "0"), name: `b${w}${i}`, owner: "t1", spec, status: { phase: VmPhase.VM_PHASE_PENDING } });
          await store.put(keys.vm(vm.id), Vm.encode(vm).finish());
        }
        answers.push(...(await Promise.all(Array.from({ length: 6 }, (_, i) => repo.create("t1", `c${w}-${i}`, spec, limits, { peer: "test" })))));
      }
      await until(() => ctl!.stats.placed === 24, "all 24 slots taken");
      await new Promise((r) => setTimeout(r, 500));
      expect(ctl.stats.placed).toBe(24);
      expect(await checkPlacementInvariants(store, hostIds, 4)).toEqual({ placed: 24, unplaced: 12 });
      // Each answer is the VM as its create wrote it; those placed then still are, on that host.
      const stored = new Map((await store.list(keys.vmsPrefix)).kvs.map((kv) => [Vm.decode(kv.value).id, Vm.decode(kv.value)]));
      const placedAtCreate = answers.filter((a) => a.vm.status?.hostId);
      expect(placedAtCreate.length).toBeGreaterThan(0);
      for (const a of placedAtCreate) expect(stored.get(a.vm.id)?.status?.hostId).toBe(a.vm.status?.hostId);
    } finally {
      await ctl?.stop();
      await cluster.stop();
      await raw.close();
    }
  });
});
