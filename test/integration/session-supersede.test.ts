// An agent that reconnects leaves its old session behind (on this replica or
// another) for a while. The old session must not take the host's liveness
// back from the new one: it ends as soon as it sees the newer session's key,
// and when its lease has expired it does not mark the host alive again. (The
// chaos suite caught an old session re-marking the host alive with a lease of
// its own, which then expired: the host showed UNREACHABLE for minutes while
// the agent's live session was answered.)
import * as grpc from "@grpc/grpc-js";
import { afterEach, describe, expect, it } from "vitest";
import { AgentServiceClient, type SessionRequest, type SessionResponse } from "../../gen/noid/v1/agent.js";
import { HostState, VmPhase } from "../../sdk/index.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface RawSession {
  write(m: SessionRequest): void;
  acks: number[];
  snapshots: number;
  /** Ids of VMs sent one by one (deltas). */
  vms: string[];
  ended: Promise<grpc.ServiceError | undefined>;
  beat(): void;
  cancel(): void;
}

function open(client: AgentServiceClient, token: string, hostId: string): Promise<RawSession> {
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${token}`);
  const stream = client.session(md);
  let seq = 0;
  const s: RawSession = {
    write: (m) => void stream.write(m),
    acks: [],
    snapshots: 0,
    vms: [],
    ended: new Promise((resolve) => {
      stream.on("error", (e: grpc.ServiceError) => resolve(e));
      stream.on("end", () => resolve(undefined));
    }),
    beat: () => void stream.write({ kind: { $case: "heartbeat", value: { sequence: ++seq } } }),
    cancel: () => stream.cancel(),
  };
  cleanups.push(() => s.cancel());
  return new Promise((resolve) => {
    stream.on("data", (m: SessionResponse) => {
      if (m.kind?.$case === "heartbeatAck") s.acks.push(m.kind.value.sequence);
      if (m.kind?.$case === "vm") s.vms.push(m.kind.value.id);
      if (m.kind?.$case === "snapshot") {
        s.snapshots++;
        resolve(s);
      }
    });
    stream.write({ kind: { $case: "hello", value: { hostId, meshDeltas: false, batches: false } } });
  });
}

async function setup(): Promise<{ c: TestCluster; client: AgentServiceClient; hostId: string }> {
  const c = await startTestCoordinator({ agents: { lease_ttl_seconds: 2, heartbeat_interval_ms: 300 }, host_loss: { policy: "keep", grace_seconds: 30 } });
  cleanups.push(() => c.stop());
  const client = new AgentServiceClient(c.address, grpc.credentials.createInsecure());
  cleanups.push(() => client.close());
  const md = new grpc.Metadata();
  md.set("authorization", `Bearer ${c.adminToken}`);
  const reg = await new Promise<{ hostId: string }>((resolve, reject) =>
    client.registerHost(
      { name: "sup-a", address: "10.77.0.1", labels: {}, drivers: ["sandbox"], capacity: { vcpus: 4, memoryMb: 4096, diskGb: 40 }, wireguardPublicKey: "", wireguardPort: 0, agentVersion: "sim", posture: undefined },
      md,
      (err, r) => (err ? reject(err) : resolve(r!)),
    ),
  );
  return { c, client, hostId: reg.hostId };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("an agent's old session after it reconnected", () => {
  // Two mechanisms, one test each (together, either alone would end the session and hide the other).
  const ended = async (s: RawSession) => {
    const err = await Promise.race([s.ended, sleep(5000).then(() => "still open" as const)]);
    expect(err).not.toBe("still open");
    expect((err as grpc.ServiceError).code).toBe(grpc.status.FAILED_PRECONDITION);
  };

  it("ends at its next heartbeat once a newer session holds the host; the new one keeps the host READY", async () => {
    const { c, client, hostId } = await setup();
    const admin = c.client();
    const old = await open(client, c.adminToken, hostId);
    old.beat();
    await eventually(async () => old.acks.length >= 1, 5000, "old session acked");
    const fresh = await open(client, c.adminToken, hostId);
    old.beat(); // its lease is still good: only the liveness key tells it another session holds the host
    await ended(old);
    fresh.beat();
    await eventually(async () => fresh.acks.length >= 1, 5000, "new session acked");
    expect((await admin.getHost("sup-a")).state).toBe(HostState.HOST_STATE_READY);
  });

  it("does not apply a report that arrives late on the old session: the new session's stands", async () => {
    const { c, client, hostId } = await setup();
    const admin = c.client();
    const old = await open(client, c.adminToken, hostId);
    const vm = await admin.createVm("sup-vm", { vcpus: 1, memoryMb: 64, host: "sup-a" });
    const fresh = await open(client, c.adminToken, hostId);
    fresh.write({ kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "", destroyed: false } } });
    await eventually(async () => (await admin.getVm("sup-vm")).status?.phase === VmPhase.VM_PHASE_RUNNING, 5000, "RUNNING from the new session");
    // No heartbeat on the old session: the report alone meets the fence.
    old.write({ kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_CREATING, reason: "", ip: "", mac: "", destroyed: false } } });
    await ended(old);
    expect((await admin.getVm("sup-vm")).status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
  });

  it("whose lease expired does not mark the host alive again with a lease of its own (the host stays READY on the new session)", async () => {
    const { c, client, hostId } = await setup();
    const admin = c.client();
    const old = await open(client, c.adminToken, hostId);
    const fresh = await open(client, c.adminToken, hostId);
    // The old session goes quiet past its lease (2 s) while the new one heartbeats.
    const beats = setInterval(() => fresh.beat(), 300);
    cleanups.push(() => clearInterval(beats));
    await sleep(3000);
    old.beat(); // its lease is gone: before, it took a new lease and re-marked the host alive with it
    await ended(old);
    // Past another lease TTL: the host is still READY (a key on the old session's new lease would have expired by now).
    for (let i = 0; i < 8; i++) {
      await sleep(400);
      expect((await admin.getHost("sup-a")).state).toBe(HostState.HOST_STATE_READY);
    }
    expect(fresh.acks.length).toBeGreaterThan(10);
  });
});
describe("an agent that removed a VM it should run", () => {
  it("does not make the coordinator forget the VM: the record stays and the agent gets the VM again", async () => {
    const { c, client, hostId } = await setup();
    const admin = c.client();
    const s = await open(client, c.adminToken, hostId);
    const vm = await admin.createVm("kept-vm", { vcpus: 1, memoryMb: 64, host: "sup-a" });
    await eventually(async () => s.vms.includes(vm.id), 5000, "the VM sent to its host");
    s.write({ kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_RUNNING, reason: "", ip: "", mac: "", destroyed: false } } });
    await eventually(async () => (await admin.getVm("kept-vm")).status?.phase === VmPhase.VM_PHASE_RUNNING, 5000, "RUNNING");
    const sent = s.vms.length;
    // A stale view made the agent treat the VM as an orphan: it removed it and says so.
    s.write({ kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_STOPPED, reason: "", ip: "", mac: "", destroyed: true } } });
    await eventually(async () => s.vms.length > sent, 5000, "the VM sent again");
    expect(s.vms.at(-1)).toBe(vm.id);
    expect((await admin.getVm("kept-vm")).id).toBe(vm.id);
    // A VM being destroyed is removed by the same report.
    await admin.destroyVm({ id: vm.id });
    s.write({ kind: { $case: "vmStatus", value: { vmId: vm.id, phase: VmPhase.VM_PHASE_STOPPED, reason: "", ip: "", mac: "", destroyed: true } } });
    await eventually(async () => (await admin.listVms()).length === 0, 5000, "the destroyed VM removed");
  });
});
