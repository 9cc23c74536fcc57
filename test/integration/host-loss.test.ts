// The leader's host-loss controller against real etcd and a real coordinator,
// hosts simulated (real session protocol): UNKNOWN, keep, reschedule after the grace.
import { afterEach, describe, expect, it } from "vitest";
import { HostLossPolicy, HostState, VmPhase } from "../../sdk/index.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function cluster(): Promise<TestCluster> {
  const c = await startTestCoordinator({ agents: { lease_ttl_seconds: 2, heartbeat_interval_ms: 300 }, host_loss: { policy: "keep", grace_seconds: 3 } });
  cleanups.push(() => c.stop());
  return c;
}

async function agent(c: TestCluster, name: string): Promise<SimAgent> {
  const a = new SimAgent({ address: c.address, token: c.adminToken, name, capacity: { vcpus: 4, memoryMb: 4096, diskGb: 40 }, autoRun: true });
  cleanups.push(() => a.close());
  await a.connect();
  return a;
}

describe("host loss (leader's controller)", () => {
  it("a lost host's VMs go UNKNOWN; keep ones stay, reschedule ones move after the grace, to a live host", async () => {
    const c = await cluster();
    const admin = c.client();
    const a = await agent(c, "hl-a");
    await admin.createVm("k", { vcpus: 1, memoryMb: 64, host: "hl-a" });
    await admin.createVm("r", { vcpus: 1, memoryMb: 64, hostSelector: {}, hostLoss: { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, graceSeconds: 0 } });
    await eventually(async () => (await admin.listVms()).every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING && v.status.hostName === "hl-a"), 20_000, "both RUNNING on hl-a");
    await agent(c, "hl-b");
    const lostAt = Date.now();
    a.close();
    await eventually(async () => (await admin.getHost("hl-a")).state === HostState.HOST_STATE_UNREACHABLE, 20_000, "hl-a UNREACHABLE");
    await eventually(async () => (await admin.getVm("k")).status?.phase === VmPhase.VM_PHASE_UNKNOWN, 20_000, "k UNKNOWN");
    const moved = await eventually(async () => {
      const v = await admin.getVm("r");
      return v.status?.hostName === "hl-b" && v.status.phase === VmPhase.VM_PHASE_RUNNING ? v : undefined;
    }, 30_000, "r RUNNING on hl-b");
    // Not before the cluster's grace (3 s) passed since the host was seen without a lease (the
    // coordinator's clock on both sides: the lease may have been renewed just before the close).
    const since = (await admin.getHost("hl-a")).unreachableSince;
    expect(since).toBeInstanceOf(Date);
    expect(since!.getTime()).toBeGreaterThanOrEqual(lostAt - 1000);
    expect(moved.status!.updatedAt!.getTime() - since!.getTime()).toBeGreaterThanOrEqual(3000);
    expect(moved.status?.reason ?? "").toBe("");
    const k = await admin.getVm("k");
    expect(k.status?.hostName).toBe("hl-a");
    expect(k.status?.phase).toBe(VmPhase.VM_PHASE_UNKNOWN);
    expect((await admin.getHost("hl-a")).vmCount).toBe(1);

    // The host comes back (its agent restarted): READY again, no longer marked unreachable.
    await agent(c, "hl-a");
    await eventually(async () => {
      const h = await admin.getHost("hl-a");
      return h.state === HostState.HOST_STATE_READY && h.unreachableSince === undefined ? h : undefined;
    }, 20_000, "hl-a READY, unreachable mark cleared");
  }, 90_000);
});
