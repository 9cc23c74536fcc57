// The whole system as the demo runs it: the built coordinator (embedded etcd)
// and real agent daemons in three namespace hosts, sandbox VMs, the SDK.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { killProcess } from "../../common/run.js";
import { HostState, Role, VmPhase, type NoidClient } from "../../sdk/index.js";

const prefix = `c${randomBytes(3).toString("hex").slice(0, 5)}`;

function vmNamespaces(): string[] {
  return execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
    .split("\n")
    .map((l) => l.split(" ")[0] ?? "")
    .filter((n) => n.startsWith(`${prefix}-h`) && n.includes("-vm-"));
}

function pidsIn(ns: string): string {
  return execFileSync("ip", ["netns", "pids", ns], { encoding: "utf8" }).trim().split("\n").sort().join(",");
}

describe("local cluster: coordinator + 3 agent hosts", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;

  beforeAll(async () => {
    cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 3 });
    const admin = cluster.client();
    alice = cluster.client((await admin.createToken({ name: "alice", role: Role.ROLE_USER })).secret);
  }, 120_000);

  afterAll(async () => {
    await cluster?.stop();
    expect(await labLeftovers(prefix)).toEqual([]);
  }, 60_000);

  it("places VMs across the hosts and every agent runs its own", async () => {
    for (let i = 1; i <= 3; i++) await alice.createVm(`web-${i}`, { vcpus: 1, memoryMb: 128, antiAffinityGroup: "web" });
    const vms = await waitFor(
      "3 VMs RUNNING",
      async () => {
        const l = await alice.listVms();
        return l.length === 3 && l.every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING) ? l : undefined;
      },
      60_000,
    );
    expect(new Set(vms.map((v) => v.status?.hostName))).toEqual(new Set(cluster.hostNames));
    // One namespace per VM, each on the host the coordinator chose.
    const ns = vmNamespaces();
    expect(ns.length).toBe(3);
    for (const [i] of cluster.hostNames.entries()) expect(ns.filter((n) => n.startsWith(`${prefix}-h${i + 1}-vm-`)).length).toBe(1);
  });

  it("adopts running VMs after the agent is SIGKILLed, without restarting them", async () => {
    const before = Object.fromEntries(vmNamespaces().map((n) => [n, pidsIn(n)]));
    await killProcess(cluster.agents[0]!, 0);
    await cluster.startAgent(0);
    const admin = cluster.client();
    await waitFor("host1 READY again", async () => ((await admin.getHost("host1")).state === HostState.HOST_STATE_READY ? true : undefined), 30_000);
    // Give the restarted agent time to reconcile (it would recreate anything it did not adopt).
    await new Promise((r) => setTimeout(r, 2000));
    const after = Object.fromEntries(vmNamespaces().map((n) => [n, pidsIn(n)]));
    expect(after).toEqual(before);
    expect((await alice.listVms()).every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING)).toBe(true);
  });

  it("stops, starts and destroys through the agent", async () => {
    await alice.stopVm("web-1");
    await alice.waitForVm("web-1", (vm) => vm.status?.phase === VmPhase.VM_PHASE_STOPPED, { timeoutMs: 30_000 });
    await alice.startVm("web-1");
    await alice.waitForVm("web-1", (vm) => vm.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs: 30_000 });
    for (const v of await alice.listVms()) await alice.destroyVm(v.name);
    await waitFor("all VMs gone", async () => ((await alice.listVms()).length === 0 ? true : undefined), 30_000);
    await waitFor("all VM namespaces gone", async () => (vmNamespaces().length === 0 ? true : undefined), 10_000);
    const hosts = await cluster.client().listHosts();
    expect(hosts.map((h) => h.allocated?.vcpus)).toEqual([0, 0, 0]);
  });
});
