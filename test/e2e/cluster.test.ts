// The whole system as the demo runs it: the built coordinator (embedded etcd)
// and real agent daemons in three namespace hosts, sandbox VMs, the SDK.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { killProcess } from "../../common/run.js";
import { HostState, Role, VmPhase, type NoidClient } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";

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
  let aliceToken = "";

  beforeAll(async () => {
    cluster = await startLocalCluster({ prefix, dir: `/run/noid-e2e-${prefix}`, hosts: 3 });
    const admin = cluster.client();
    aliceToken = (await admin.createToken({ name: "alice", role: Role.ROLE_USER })).secret;
    alice = cluster.client(aliceToken);
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

  it("runs commands in a VM through coordinator and agent (exec), with env that stays out of argv", async () => {
    const vm = await alice.getVm("web-2");
    const link = await alice.exec("web-2", ["ip", "-o", "link", "show", "eth0"]);
    expect(link.exitCode).toBe(0);
    expect(link.stdout.toString()).toContain(vm.status!.mac || "link/ether"); // inside the VM's own namespace
    const env = await alice.exec("web-2", ["sh", "-c", 'echo "$GREETING"; env'], { env: { GREETING: "hello-from-exec" } });
    expect(env.stdout.toString().split("\n")[0]).toBe("hello-from-exec");
    expect(env.stdout.toString()).not.toMatch(/NOID_|authorization/i); // the agent's environment does not leak in
    const failing = await alice.exec("web-2", ["sh", "-c", "echo oops >&2; exit 3"]);
    expect(failing.exitCode).toBe(3);
    expect(failing.stderr.toString().trim()).toBe("oops");
    // Another tenant cannot exec in alice's VM; a stopped or unknown VM is refused clearly.
    const bob = cluster.client((await cluster.client().createToken({ name: "bob", role: Role.ROLE_USER })).secret);
    await expect(bob.exec({ id: vm.id }, ["true"])).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(alice.exec("nope", ["true"])).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(alice.exec("web-2", [])).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    // The same through noidctl: output streamed, the command's exit code becomes noidctl's.
    let out = "";
    const code = await noidctl(["exec", "web-2", "-e", "WHO", "--", "sh", "-c", 'echo "hi $WHO"; exit 7'], {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml", WHO: "alice" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" },
    });
    expect(code, out).toBe(7);
    expect(out.trim()).toBe("hi alice");
    const audit = await cluster.client().listAuditEvents({ event: "vm.exec", limit: 10 });
    expect(audit.some((e) => e.vm === "web-2" && e.detail.includes("GREETING") && !e.detail.includes("hello-from-exec"))).toBe(true);
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
