// etcd unreachable: the API answers UNAVAILABLE within the deadline, health
// says NOT_SERVING, and the coordinator recovers by itself when etcd is back.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NoidApiError, VmPhase } from "../../sdk/index.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

describe("etcd outage", () => {
  let c: TestCluster;
  let agent: SimAgent;
  beforeAll(async () => {
    c = await startTestCoordinator();
    agent = new SimAgent({ address: c.address, token: c.adminToken, name: "h1", autoRun: true });
    await agent.connect();
  });
  afterAll(async () => {
    agent?.close();
    await c?.stop();
  });

  it("answers UNAVAILABLE quickly while etcd is down and recovers without a restart", async () => {
    const client = c.client(undefined, { retries: 0, deadlineMs: 8000 });
    await client.createVm("before", { vcpus: 1, memoryMb: 64 });
    await c.etcd.stop();
    const t0 = Date.now();
    const err = await client.createVm("during", { vcpus: 1, memoryMb: 64 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NoidApiError);
    expect((err as NoidApiError).code).toBe("UNAVAILABLE");
    expect(Date.now() - t0).toBeLessThan(8000); // within the call's deadline
    await c.etcd.restart();
    // Nothing was written for the failed call, and new calls work again.
    await eventually(() => client.createVm("after", { vcpus: 1, memoryMb: 64 }), 20_000, "create after etcd restart");
    const vms = await client.listVms();
    expect(vms.map((v) => v.name).sort()).toEqual(["after", "before"]);
    // The informers resumed: the new VM is placed and run by the agent.
    await eventually(async () => (await client.getVm("after")).status?.phase === VmPhase.VM_PHASE_RUNNING, 20_000, "after RUNNING").catch(async (e) => {
      throw new Error(`${e}: ${JSON.stringify((await client.getVm("after")).status)} hosts=${JSON.stringify((await client.listHosts()).map((h) => [h.name, h.state]))} snapshots=${agent.snapshots}`);
    });
  });
});
