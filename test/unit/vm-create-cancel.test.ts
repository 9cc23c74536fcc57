// Found by the fuzz test (test/integration/fuzz-api.test.ts): creates queue in
// one lane per coordinator, and a CreateVm whose caller had already given up
// (deadline passed while queued) still created its VM afterwards — the client
// saw DEADLINE_EXCEEDED, the store got a VM nobody was told about.
import { describe, expect, it } from "vitest";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import { VmRepo } from "../../coordinator/state/vm-repo.js";
import { auditKey } from "../../coordinator/audit-log.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import type { Store } from "../../coordinator/store/store.js";

const limits = { max_vms_per_user: 10, max_total_vms: 100, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };

function repo(store: Store): VmRepo {
  let n = 0;
  return new VmRepo({ store, clock: { now: () => new Date() }, newId: () => `000000000000000${++n}`, auditKey });
}

describe("VM create and a caller that gave up", () => {
  it("creates nothing when the call already ended", async () => {
    const store = new MemoryStore();
    const ac = new AbortController();
    ac.abort();
    await expect(repo(store).create("alice", "web", normalizeVmSpec(undefined), limits, { peer: "t" }, { signal: ac.signal })).rejects.toMatchObject({
      code: "DEADLINE_EXCEEDED",
    });
    expect((await store.list("vms/")).kvs).toEqual([]);
    expect((await store.list("names/")).kvs).toEqual([]);
    expect(await store.get("quota/alice")).toBeUndefined();
  });

  it("creates nothing for a call that ended while it waited behind another create", async () => {
    const mem = new MemoryStore();
    // The first create's transaction is slow; the second waits in the lane meanwhile.
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let first = true;
    const store: Store = Object.assign(Object.create(mem) as Store, {
      txn: async (...a: Parameters<Store["txn"]>) => {
        if (first) {
          first = false;
          await gate;
        }
        return mem.txn(...a);
      },
    });
    const r = repo(store);
    const ac = new AbortController();
    const a = r.create("alice", "first", normalizeVmSpec(undefined), limits, { peer: "t" });
    const b = r.create("alice", "second", normalizeVmSpec(undefined), limits, { peer: "t" }, { signal: ac.signal });
    ac.abort(); // the second caller's deadline passes while it is queued
    release();
    await expect(a).resolves.toMatchObject({ vm: { name: "first" } });
    await expect(b).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
    expect((await mem.list("names/alice/")).kvs.map((kv) => kv.key)).toEqual(["names/alice/first"]);
  });
});
