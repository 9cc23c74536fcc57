// Session messages in batches (Hello.batches): what the coordinator has for an agent while
// the last write is on its way goes out as one SessionResponse.batch, in order; snapshots
// and commands go alone; an agent that did not ask gets no batch. Real etcd, real gRPC,
// protocol-level agents: a burst of creates placed on two hosts, one of each kind.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VmPhase, type NoidClient } from "../../sdk/index.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { nextWrite } from "../../coordinator/services/agent-service.js";
import type { SessionResponse } from "../../gen/noid/v1/agent.js";

describe("session batches", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let batched: SimAgent;
  let plain: SimAgent;

  beforeAll(async () => {
    c = await startTestCoordinator({ limits: { max_vms_per_user: 100, max_total_vms: 100 } });
    admin = c.client();
    const capacity = { vcpus: 64, memoryMb: 65536, diskGb: 1000 };
    batched = new SimAgent({ address: c.address, token: c.adminToken, name: "host-batch", capacity, autoRun: true, meshDeltas: true });
    plain = new SimAgent({ address: c.address, token: c.adminToken, name: "host-plain", capacity, autoRun: true, meshDeltas: true, batches: false });
    await batched.connect();
    await plain.connect();
  });
  afterAll(async () => {
    batched?.close();
    plain?.close();
    await c?.stop();
  });

  it("a burst reaches both agents whole and in order; only the one that asked gets batches", async () => {
    const names = Array.from({ length: 40 }, (_, i) => `burst-${i}`);
    const made = await Promise.all(names.map((n) => admin.createVm(n, { vcpus: 1, memoryMb: 64 })));
    // Every VM reaches the host it was placed on, and runs there (the agents report RUNNING once they see it).
    await eventually(async () => (await admin.listVms()).filter((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING).length === names.length, 20_000, "every VM RUNNING");
    const vms = await admin.listVms();
    for (const v of made) {
      const host = vms.find((x) => x.id === v.id)!.status!.hostName;
      expect(host === "host-batch" ? batched.vms.has(v.id) : plain.vms.has(v.id), `${v.name} known to ${host}`).toBe(true);
    }
    expect(batched.vms.size + plain.vms.size).toBe(names.length);
    expect(batched.vms.size).toBeGreaterThan(0);
    expect(plain.vms.size).toBeGreaterThan(0);
    // The mesh views both agents built from deltas fit (a batch applies them in order).
    expect(batched.meshError).toBeUndefined();
    expect(plain.meshError).toBeUndefined();
    expect(batched.batchesReceived).toBeGreaterThan(0);
    expect(plain.batchesReceived).toBe(0);

    // Destroys: the later state wins on both (a batch keeps the order of changes to one VM).
    await Promise.all(made.map((v) => admin.destroyVm(v.name)));
    await eventually(async () => (await admin.listVms()).length === 0, 20_000, "every VM gone");
    await eventually(() => batched.vms.size === 0 && plain.vms.size === 0, 10_000, "both agents told");
  });
});

describe("nextWrite", () => {
  const vm = (id: string): { m: SessionResponse } => ({ m: { kind: { $case: "vmRemoved", value: { vmId: id } } } });
  const ack = (n: number): { m: SessionResponse } => ({ m: { kind: { $case: "heartbeatAck", value: { sequence: n } } } });
  const snap: { m: SessionResponse } = { m: { kind: { $case: "snapshot", value: { vms: [] } } } };
  const full: { m: SessionResponse } = { m: { kind: { $case: "meshUpdate", value: { version: 1, kind: { $case: "full", value: { members: [], meshPrefixLen: 16 } } } } } };

  it("takes runs of small messages together and anything else alone, in order", () => {
    const box = [vm("a"), ack(1), snap, vm("b"), full, vm("c"), vm("d")];
    const writes: { m: SessionResponse }[][] = [];
    while (box.length > 0) writes.push(nextWrite(box));
    expect(writes.map((w) => w.length)).toEqual([2, 1, 1, 1, 2]);
    expect(writes[1]![0]).toBe(snap);
    expect(writes[3]![0]).toBe(full);
    expect(writes.flat().map((x) => (x.m.kind?.$case === "vmRemoved" ? x.m.kind.value.vmId : x.m.kind?.$case))).toEqual(["a", "heartbeatAck", "snapshot", "b", "meshUpdate", "c", "d"]);
  });

  it("caps a batch", () => {
    const box = Array.from({ length: 300 }, (_, i) => vm(String(i)));
    expect(nextWrite(box).length).toBe(128);
    expect(box.length).toBe(172);
  });
});
