// Looking a VM up by name (GetVm, StopVm... by name) on a real etcd: with the
// informer's name index the id is a guess checked against the VM read from
// etcd, so a fresh index costs one read, and an index that lags etcd (the VM
// destroyed, or destroyed and created again under the same name on another
// replica) still answers what etcd holds now, never the VM that was.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { Vm, VmSpec } from "../../gen/noid/v1/vm.js";
import { auditKey } from "../../coordinator/audit-log.js";
import { Informer } from "../../coordinator/state/informer.js";
import { InformerNameIndex } from "../../coordinator/state/name-index.js";
import { VmRepo, newVmId } from "../../coordinator/state/vm-repo.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec } from "../../coordinator/state/codec.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { countingStore } from "../helpers/counting-store.js";

let etcd: TestEtcd;
let store: EtcdStore;
const clock = { now: () => new Date() };
const limits = { max_vms_per_user: 10, max_total_vms: 10, max_vcpus_per_vm: 4, max_memory_per_vm: 4096, max_disk_per_vm: 10, max_exposed_ports_per_user: 3 };
const spec = VmSpec.fromPartial({ vcpus: 1, memoryMb: 64, diskGb: 1 });

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/noid-byname-${Date.now()}/` });
});
afterAll(async () => {
  store?.close();
  await etcd?.stop();
});

describe("VM lookup by name", () => {
  it("one etcd read with a fresh name index; a lagging index still answers what etcd holds", async () => {
    const informer = new Informer(store, keys.vmsPrefix, (b) => dec(Vm, b), silentLogger());
    await informer.start();
    const names = new InformerNameIndex(informer);
    const c = countingStore(store);
    const here = new VmRepo({ store: c.store, clock, newId: newVmId, auditKey, names });
    // Another replica: its own repository, no index.
    const there = new VmRepo({ store, clock, newId: newVmId, auditKey });
    try {
      const web = await there.create("olga", "web", spec, limits, { peer: "test" });
      await informer.waitFor(web.modRevision);
      let before = c.count("get");
      expect((await here.getByName("olga", "web"))?.vm.id).toBe(web.vm.id);
      expect(c.count("get") - before, "reads for a name the index knows").toBe(1);

      before = c.count("get");
      expect(await here.getByName("olga", "nope")).toBeUndefined();
      expect(c.count("get") - before, "an unknown name reads its name key only").toBe(1);

      // The index stops following etcd; on the other replica "web" is destroyed and created again.
      names.stop();
      await there.requestDestroy(web.vm.id, "olga", "test");
      expect(await here.getByName("olga", "web"), "a destroyed VM is not found through a stale guess").toBeUndefined();
      const again = await there.create("olga", "web", spec, limits, { peer: "test" });
      expect(again.vm.id).not.toBe(web.vm.id);
      expect((await here.getByName("olga", "web"))?.vm.id, "the VM that has the name now").toBe(again.vm.id);
    } finally {
      names.stop();
      await informer.stop();
    }
  });
});
