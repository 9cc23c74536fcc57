// A VM its agent reports FAILED gives its host's capacity back at once: the coordinator
// unassigns it in the same transaction, keeps it (name, reason, quota) for its owner, and
// places it again only when it is started. Real etcd, real gRPC, a protocol-level agent.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { VmPhase, type NoidClient } from "../../sdk/index.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

describe("FAILED VMs release their host", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let agent: SimAgent;

  beforeAll(async () => {
    c = await startTestCoordinator();
    admin = c.client();
    // Room for exactly one 2-vCPU VM; this agent reports nothing by itself.
    agent = new SimAgent({ address: c.address, token: c.adminToken, name: "host-f", capacity: { vcpus: 2, memoryMb: 1024, diskGb: 10 } });
    await agent.connect();
  });
  afterAll(async () => {
    agent?.close();
    await c?.stop();
  });

  it("unassigns a FAILED VM, frees its capacity for others, and places it again on start", async () => {
    const bad = await admin.createVm("bad", { vcpus: 2, memoryMb: 512, image: "no-such-image" });
    await eventually(() => agent.vms.has(bad.id), 10_000, "bad assigned to host-f");
    expect((await admin.getHost("host-f")).allocated?.vcpus).toBe(2);
    // No room now: kept PENDING and said so.
    await expect(admin.createVm("next", { vcpus: 2, memoryMb: 512 })).rejects.toMatchObject({ code: "RESOURCE_EXHAUSTED" });
    expect((await admin.getVm("next")).status?.hostId).toBe("");

    agent.report(bad.id, VmPhase.VM_PHASE_FAILED, { reason: 'create: image "no-such-image" not found' });
    const failed = await eventually(async () => {
      const v = await admin.getVm("bad");
      return v.status?.phase === VmPhase.VM_PHASE_FAILED ? v : undefined;
    }, 10_000, "bad FAILED");
    expect(failed!.status).toMatchObject({ hostId: "", hostName: "", reason: 'on host host-f: create: image "no-such-image" not found' });
    // The agent is told the VM is no longer its own, and the freed room goes to the waiting VM.
    await eventually(() => !agent.vms.has(bad.id), 10_000, "bad removed from host-f");
    const next = await eventually(async () => {
      const v = await admin.getVm("next");
      return v.status?.hostName === "host-f" ? v : undefined;
    }, 10_000, "next placed on host-f");
    expect((await admin.getHost("host-f")).allocated?.vcpus).toBe(2);
    // A FAILED VM is not placed again by itself, even when room appears.
    agent.report(next!.id, VmPhase.VM_PHASE_FAILED, { reason: "start: guest did not boot" });
    await eventually(async () => (await admin.getHost("host-f")).allocated?.vcpus === 0, 10_000, "host-f empty");
    await new Promise((r) => setTimeout(r, 300));
    expect((await admin.getVm("bad")).status).toMatchObject({ phase: VmPhase.VM_PHASE_FAILED, hostId: "" });
    // A stale report from the host changes nothing.
    agent.report(bad.id, VmPhase.VM_PHASE_RUNNING);
    await new Promise((r) => setTimeout(r, 300));
    expect((await admin.getVm("bad")).status?.phase).toBe(VmPhase.VM_PHASE_FAILED);

    // Start: back to PENDING, placed again.
    await admin.startVm("bad");
    await eventually(async () => (await admin.getVm("bad")).status?.hostName === "host-f", 10_000, "bad placed again");
    // The API shows the placement once etcd has it; the host hears of it through its session, a moment later.
    await eventually(() => agent.vms.has(bad.id), 10_000, "bad sent to host-f again");
    expect((await admin.getVm("bad")).status?.reason).toBe("");

    // Destroying a FAILED VM (no host holds it) removes it at once.
    await admin.destroyVm("next");
    await eventually(async () => (await admin.listVms()).every((v) => v.name !== "next"), 10_000, "next gone");
  });
});
