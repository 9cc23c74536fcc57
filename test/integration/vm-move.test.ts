// The migration switch against real etcd: one transaction moves a running VM's host,
// placement index and both hosts' allocations and writes the audit event; the target's
// reports keep it MIGRATING until it runs, which clears the migration; the source can no
// longer report it; a move whose preconditions do not hold changes nothing.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { exhausted } from "../../common/errors.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import { VmRepo, addAlloc, newVmId } from "../../coordinator/state/vm-repo.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec, enc } from "../../coordinator/state/codec.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

let etcd: TestEtcd;
let store: EtcdStore;
let seq = 0;
const A = { id: "aaaaaaaaaaaaaaaa", name: "host1" };
const B = { id: "bbbbbbbbbbbbbbbb", name: "host2" };

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/noid-move-${Date.now()}/` });
});
afterAll(async () => {
  await store?.close();
  await etcd?.stop();
});

describe("VmRepo.moveTo (the migration switch)", () => {
  it("moves host, placement and allocations in one transaction; MIGRATING until the target reports it running", async () => {
    const repo = new VmRepo({ store, clock: { now: () => new Date() }, newId: newVmId, auditKey: () => `a${String(++seq).padStart(6, "0")}` });
    const limits = { max_vms_per_user: 10, max_total_vms: 100, max_vcpus_per_vm: 8, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };
    const { vm: created } = await repo.create("alice", "web", { vcpus: 1, memoryMb: 256, diskGb: 2, driver: "", image: "", labels: {}, hostSelector: {}, host: "host1", antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined }, limits, { peer: "t" });
    // Placed and running on host1.
    const running: Vm = { ...created, status: { ...created.status!, hostId: A.id, hostName: A.name, phase: VmPhase.VM_PHASE_RUNNING, ip: "10.0.0.5/24", mac: "02:00:00:00:00:05" } };
    await store.txn([], [
      { type: "put", key: keys.vm(created.id), value: enc(Vm, running) },
      { type: "put", key: keys.assign(A.id, created.id), value: Buffer.from(created.id) },
      { type: "put", key: keys.alloc(A.id), value: enc(AllocationRecord, addAlloc(undefined, running)) },
      { type: "put", key: keys.host(A.id), value: Buffer.from("x") },
      { type: "put", key: keys.host(B.id), value: Buffer.from("x") },
    ]);
    const snapshot = async () => (await store.list("")).kvs.filter((kv) => !kv.key.startsWith("audit/")).map((kv) => `${kv.key}=${Buffer.from(kv.value).toString("base64")}`).sort();

    // Refused, nothing changed: no room on the target; not from the host it is on.
    const before = await snapshot();
    await expect(repo.moveTo(created.id, A, B, { id: "0011223344556677", sha256: "ab", driver: "qemu" }, () => { throw exhausted("no room"); }, { actor: "alice", peer: "t", detail: "" })).rejects.toMatchObject({ code: "RESOURCE_EXHAUSTED" });
    await expect(repo.moveTo(created.id, B, A, { id: "0011223344556677", sha256: "ab", driver: "qemu" }, () => undefined, { actor: "alice", peer: "t", detail: "" })).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    expect(await snapshot()).toEqual(before);

    const moved = await repo.moveTo(created.id, A, B, { id: "0011223344556677", sha256: "ab".repeat(32), driver: "qemu" }, () => undefined, { actor: "alice", peer: "t", detail: "from host1" });
    const stored = (await repo.get(created.id))!.vm;
    expect(stored).toEqual(moved);
    expect(stored.status).toMatchObject({ hostId: B.id, hostName: "host2", phase: VmPhase.VM_PHASE_MIGRATING, ip: "10.0.0.5/24", mac: "02:00:00:00:00:05", migrationId: "0011223344556677" });
    expect(stored.spec).toMatchObject({ host: "host2", driver: "qemu" });
    expect(await store.get(keys.assign(A.id, created.id))).toBeUndefined();
    expect(await store.get(keys.assign(B.id, created.id))).toBeDefined();
    expect(dec(AllocationRecord, (await store.get(keys.alloc(A.id)))!.value)).toMatchObject({ vmCount: 0, allocated: { vcpus: 0, memoryMb: 0, diskGb: 0 } });
    expect(dec(AllocationRecord, (await store.get(keys.alloc(B.id)))!.value)).toMatchObject({ vmCount: 1, allocated: { vcpus: 1, memoryMb: 256, diskGb: 2 } });
    const audits = (await store.list("audit/")).kvs.map((kv) => dec(AuditEvent, kv.value));
    expect(audits.filter((e) => e.event === "vm.migrate")).toMatchObject([{ user: "alice", vm: "web", host: "host2", success: true, detail: "from host1" }]);

    // A second move while it moves is refused (it is not RUNNING on host1 any more).
    await expect(repo.moveTo(created.id, A, B, { id: "1111111111111111", sha256: "", driver: "qemu" }, () => undefined, { actor: "alice", peer: "t", detail: "" })).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    // The source may not report it; the target's CREATING keeps it MIGRATING; RUNNING clears the migration.
    await expect(repo.reportStatus(A.id, { vmId: created.id, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
    await repo.reportStatus(B.id, { vmId: created.id, phase: VmPhase.VM_PHASE_CREATING, reason: "", ip: "", mac: "" });
    expect((await repo.get(created.id))!.vm.status).toMatchObject({ phase: VmPhase.VM_PHASE_MIGRATING, migrationId: "0011223344556677" });
    await repo.reportStatus(B.id, { vmId: created.id, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" });
    expect((await repo.get(created.id))!.vm.status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "host2", migrationId: "", migrationSha256: "", ip: "10.0.0.5/24" });

    // Back to host1 and again to host2, where the restore fails this time: the VM goes back
    // to host1 (its paused copy), one transaction; refused once the VM changed.
    await expect(repo.returnTo(created.id, A, B, { actor: "alice", peer: "t" })).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    await repo.moveTo(created.id, B, A, { id: "2222222222222222", sha256: "", driver: "qemu" }, () => undefined, { actor: "alice", peer: "t", detail: "" });
    await repo.reportStatus(A.id, { vmId: created.id, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "" });
    await repo.moveTo(created.id, A, B, { id: "3333333333333333", sha256: "", driver: "qemu" }, () => undefined, { actor: "alice", peer: "t", detail: "" });
    await repo.reportStatus(B.id, { vmId: created.id, phase: VmPhase.VM_PHASE_FAILED, reason: "restore: checksum mismatch", ip: "", mac: "" });
    expect((await repo.get(created.id))!.vm.status).toMatchObject({ phase: VmPhase.VM_PHASE_FAILED, hostId: "", migrationId: "" });
    const back = await repo.returnTo(created.id, A, B, { actor: "alice", peer: "t" });
    expect((await repo.get(created.id))!.vm).toEqual(back);
    expect(back.status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostId: A.id, hostName: "host1", ip: "10.0.0.5/24", reason: expect.stringMatching(/checksum mismatch.*runs on at host1/) });
    expect(back.spec?.host).toBe("host1");
    expect(await store.get(keys.assign(A.id, created.id))).toBeDefined();
    expect(await store.get(keys.assign(B.id, created.id))).toBeUndefined();
    expect(dec(AllocationRecord, (await store.get(keys.alloc(A.id)))!.value)).toMatchObject({ vmCount: 1, allocated: { memoryMb: 256 } });
    expect(dec(AllocationRecord, (await store.get(keys.alloc(B.id)))!.value)).toMatchObject({ vmCount: 0, allocated: { memoryMb: 0 } });
    const failedAudit = (await store.list("audit/")).kvs.map((kv) => dec(AuditEvent, kv.value)).filter((e) => e.event === "vm.migrate" && !e.success);
    expect(failedAudit).toMatchObject([{ vm: "web", host: "host2", detail: expect.stringMatching(/back on host1/) }]);
  });
});
