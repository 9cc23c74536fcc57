// Status reports applied in batches (VmRepo.reportStatuses) against real etcd:
// the plain changes of several VMs go in one transaction planned from the
// informer's copy; a stale copy, a VM reported twice and a FAILED report still
// end exactly as the reports applied one by one would; a VM on another host is
// refused without holding up the others.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import { VmRepo, addAlloc, newVmId, type StatusFence, type StoredVm } from "../../coordinator/state/vm-repo.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec, enc } from "../../coordinator/state/codec.js";
import { countingStore } from "../helpers/counting-store.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

let etcd: TestEtcd;
let store: EtcdStore;
let seq = 0;
const A = "aaaaaaaaaaaaaaaa";
const B = "bbbbbbbbbbbbbbbb";
const limits = { max_vms_per_user: 1000, max_total_vms: 1000, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };
const spec = (host: string) => ({ vcpus: 1, memoryMb: 64, diskGb: 1, driver: "", image: "", labels: {}, hostSelector: {}, host, antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined });

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/noid-status-${Date.now()}/` });
});
afterAll(async () => {
  await store?.close();
  await etcd?.stop();
});

/** VMs placed on `host` (CREATING), and a repository whose "informer copy" is what `copy` holds. */
async function setup(names: string[], hostOrHosts: string | string[], copy: Map<string, StoredVm>): Promise<{ repo: VmRepo; ids: string[]; txns: () => number }> {
  const counting = countingStore(store);
  const repo = new VmRepo({ store: counting.store, clock: { now: () => new Date() }, newId: newVmId, auditKey: () => `a${String(++seq).padStart(6, "0")}`, cached: (id) => copy.get(id) });
  const ids: string[] = [];
  const allocs = new Map<string, AllocationRecord | undefined>();
  for (const [i, n] of names.entries()) {
    const host = typeof hostOrHosts === "string" ? hostOrHosts : hostOrHosts[i]!;
    const { vm } = await repo.create("alice", `${n}-${seq}`, spec(""), limits, { peer: "t" });
    const placed: Vm = { ...vm, status: { ...vm.status!, hostId: host, hostName: `h-${host.slice(0, 4)}`, phase: VmPhase.VM_PHASE_CREATING } };
    const alloc = addAlloc(allocs.get(host), placed);
    allocs.set(host, alloc);
    const r = await store.txn([], [
      { type: "put", key: keys.vm(vm.id), value: enc(Vm, placed) },
      { type: "put", key: keys.assign(host, vm.id), value: Buffer.from(vm.id) },
      { type: "put", key: keys.alloc(host), value: enc(AllocationRecord, alloc) },
    ]);
    copy.set(vm.id, { vm: placed, modRevision: r.revision });
    ids.push(vm.id);
  }
  const before = counting.count("txn");
  return { repo, ids, txns: () => counting.count("txn") - before };
}

const phaseOf = async (id: string) => dec(Vm, (await store.get(keys.vm(id)))!.value).status;

describe("VmRepo.reportStatuses", () => {
  it("writes the reports of several VMs in one transaction", async () => {
    const copy = new Map<string, StoredVm>();
    const { repo, ids, txns } = await setup(["a", "b", "c", "d"], A, copy);
    const refused = await repo.reportStatuses(A, ids.map((vmId) => ({ vmId, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" })));
    expect(refused).toEqual([]);
    for (const id of ids) expect((await phaseOf(id))?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(txns()).toBe(1);
  });

  it("the reports of many hosts at once share transactions; a stale copy on one host holds up no other", async () => {
    const copy = new Map<string, StoredVm>();
    const hosts = Array.from({ length: 30 }, (_, i) => i.toString(16).padStart(16, "c"));
    const { repo, ids, txns } = await setup(hosts.map((_, i) => `m${i}`), hosts, copy);
    const report = (phase: VmPhase) => Promise.all(hosts.map((h, i) => repo.reportStatuses(h, [{ vmId: ids[i]!, phase, reason: "", ip: "", mac: "" }])));
    // Every host reports its VM at once (as a thousand sessions do after a burst of placements): one transaction.
    expect((await report(VmPhase.VM_PHASE_RUNNING)).flat()).toEqual([]);
    for (const id of ids) expect((await phaseOf(id))?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(txns()).toBe(1);
    // The copy follows etcd (as the informer does); then host 7's VM is written behind its back.
    for (const id of ids) copy.set(id, { vm: dec(Vm, (await store.get(keys.vm(id)))!.value), modRevision: (await store.get(keys.vm(id)))!.modRevision });
    const stale = ids[7]!;
    const cur = dec(Vm, (await store.get(keys.vm(stale)))!.value);
    await store.put(keys.vm(stale), enc(Vm, { ...cur, status: { ...cur.status!, reason: "touched" } }));
    expect((await report(VmPhase.VM_PHASE_STOPPED)).flat()).toEqual([]);
    for (const id of ids) expect(await phaseOf(id)).toMatchObject({ phase: VmPhase.VM_PHASE_STOPPED, reason: "" });
    // The failed group is halved down to the stale batch (which is then applied from etcd): not a transaction per host.
    expect(txns() - 1).toBeLessThan(hosts.length / 2);
  });

  it("ends as one-by-one would with a stale copy, a VM reported twice, a FAILED report and a VM of another host", async () => {
    const copy = new Map<string, StoredVm>();
    const { repo, ids } = await setup(["s", "t", "u", "v"], A, copy);
    const other = (await setup(["w"], B, copy)).ids[0]!;
    const [stale, twice, failed, plain] = ids as [string, string, string, string];
    // The copy of `stale` lags etcd (someone wrote it since): the batch loses, and it is applied again from etcd.
    const cur = dec(Vm, (await store.get(keys.vm(stale)))!.value);
    await store.put(keys.vm(stale), enc(Vm, { ...cur, status: { ...cur.status!, reason: "touched" } }));
    const refused = await repo.reportStatuses(A, [
      { vmId: stale, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" },
      { vmId: twice, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" },
      { vmId: other, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" },
      { vmId: twice, phase: VmPhase.VM_PHASE_STOPPED, reason: "shut down", ip: "", mac: "" },
      { vmId: failed, phase: VmPhase.VM_PHASE_FAILED, reason: "boot failed", ip: "", mac: "" },
      { vmId: plain, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" },
    ]);
    expect(refused).toEqual([other]);
    expect(await phaseOf(stale)).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, reason: "" });
    // The later report of the same VM wins: they are applied in the order sent.
    expect(await phaseOf(twice)).toMatchObject({ phase: VmPhase.VM_PHASE_STOPPED, reason: "shut down" });
    // FAILED releases the VM's place, as a single report does.
    expect(await phaseOf(failed)).toMatchObject({ phase: VmPhase.VM_PHASE_FAILED, hostId: "" });
    expect(await store.get(keys.assign(A, failed))).toBeUndefined();
    expect(dec(AllocationRecord, (await store.get(keys.alloc(A)))!.value).vmCount).toBe(3);
    expect((await phaseOf(plain))?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    // The other host's VM is untouched.
    expect((await phaseOf(other))?.phase).toBe(VmPhase.VM_PHASE_CREATING);
  });

  it("applies a session's reports only while the host's liveness key is the one that session wrote (a newer session wins)", async () => {
    const copy = new Map<string, StoredVm>();
    const { repo, ids } = await setup(["f1", "f2", "f3"], A, copy);
    const [one, two, three] = ids as [string, string, string];
    // The old session wrote alive/<A>; the agent reconnected and its new session wrote it again.
    const oldRev = await store.put(keys.alive(A), Buffer.from("old session"));
    const oldFence: StatusFence = () => ({ key: keys.alive(A), target: "mod", op: "==", value: oldRev });
    const newRev = await store.put(keys.alive(A), Buffer.from("new session"));
    const newFence: StatusFence = () => ({ key: keys.alive(A), target: "mod", op: "==", value: newRev });
    // The new session's reports land (in a batch and one by one)...
    expect(await repo.reportStatuses(A, [{ vmId: one, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" }, { vmId: two, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" }], newFence)).toEqual([]);
    await repo.reportStatus(A, { vmId: three, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" }, newFence);
    // (The informer's copy catches up.)
    for (const id of ids) {
      const kv = (await store.get(keys.vm(id)))!;
      copy.set(id, { vm: dec(Vm, kv.value), modRevision: kv.modRevision });
    }
    // ...and the old session's late CREATING does not undo them: refused as superseded, nothing written.
    const before = (await store.get(keys.vm(one)))!.modRevision;
    await expect(repo.reportStatuses(A, [{ vmId: one, phase: VmPhase.VM_PHASE_CREATING, reason: "", ip: "", mac: "" }], oldFence)).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    await expect(repo.reportStatus(A, { vmId: two, phase: VmPhase.VM_PHASE_CREATING, reason: "", ip: "", mac: "" }, oldFence)).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    await expect(repo.reportStatus(A, { vmId: three, phase: VmPhase.VM_PHASE_FAILED, reason: "late", ip: "", mac: "" }, oldFence)).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    for (const id of ids) expect((await phaseOf(id))?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect((await store.get(keys.vm(one)))!.modRevision).toBe(before);
    expect(await store.get(keys.assign(A, three))).toBeDefined();
    await store.delete(keys.alive(A));
  });

  it("reports of many sessions at once stay within etcd's limit of operations per transaction (a fence per session counts)", async () => {
    const copy = new Map<string, StoredVm>();
    const hosts = Array.from({ length: 120 }, (_, i) => i.toString(16).padStart(16, "e"));
    const { repo, ids, txns } = await setup(hosts.map((_, i) => `g${i}`), hosts, copy);
    const fences = await Promise.all(
      hosts.map(async (h): Promise<StatusFence> => {
        const rev = await store.put(keys.alive(h), Buffer.from("s"));
        return () => ({ key: keys.alive(h), target: "mod", op: "==", value: rev });
      }),
    );
    const refused = await Promise.all(hosts.map((h, i) => repo.reportStatuses(h, [{ vmId: ids[i]!, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" }], fences[i])));
    expect(refused.flat()).toEqual([]);
    for (const id of ids) expect((await phaseOf(id))?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    // 120 puts and 120 fences: at least three transactions of at most 100 compares each, not one per host.
    expect(txns()).toBeGreaterThanOrEqual(3);
    expect(txns()).toBeLessThan(10);
    for (const h of hosts) await store.delete(keys.alive(h));
  });
});
