// Host loss and control-plane loss with real processes: the built coordinator
// and two agent daemons in lab hosts running sandbox VMs. Each agent reaches
// the coordinator through a unix-socket relay in this process, so one host can
// be cut off from the control plane while its VMs (and this test) still see it.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../common/run.js";
import { startLocalCluster, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { vmNetns } from "../../agent/drivers/sandbox/names.js";
import { HostLossPolicy } from "../../gen/noid/v1/vm.js";
import { HostState, Role, VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";

const prefix = `hl${randomBytes(3).toString("hex").slice(0, 5)}`;
const dir = `/run/noid-e2e-${prefix}`;
const LEASE_TTL_S = 3;
const GRACE_S = 6;

/** A byte relay from a unix socket to the coordinator's: cut() drops every connection and refuses new ones. */
class Relay {
  private server?: Server;
  private readonly conns = new Set<Socket>();
  constructor(
    readonly path: string,
    private readonly target: string,
  ) {}
  async listen(): Promise<void> {
    rmSync(this.path, { force: true });
    const server = createServer((c) => {
      const up = createConnection(this.target);
      this.conns.add(c).add(up);
      const drop = () => {
        c.destroy();
        up.destroy();
        this.conns.delete(c);
        this.conns.delete(up);
      };
      c.on("error", drop).on("close", drop);
      up.on("error", drop).on("close", drop);
      c.pipe(up).pipe(c);
    });
    this.server = server;
    await new Promise<void>((r) => server.listen(this.path, r));
  }
  async cut(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    if (s) await new Promise<void>((r) => s.close(() => r()));
    rmSync(this.path, { force: true });
  }
}

let cluster: LocalCluster;
let user: NoidClient;
const relays: Relay[] = [];

const hostIndex = (vm: Vm): number => Number(vm.status!.hostName.replace("host", "")) - 1;
const nsOf = (vm: Vm, i = hostIndex(vm)): string => vmNetns(`${prefix}-${cluster.lab.hosts[i]!.name}`, vm.id);

/** PIDs in the VM's namespace on host i ("" when it has none or the namespace is gone). */
function pidsIn(ns: string): string {
  try {
    return execFileSync("ip", ["netns", "pids", ns], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim().split("\n").filter(Boolean).sort().join(",");
  } catch {
    return "";
  }
}
const nsExists = (ns: string): boolean => execFileSync("ip", ["netns", "list"], { encoding: "utf8" }).split("\n").some((l) => l.split(" ")[0] === ns);

async function running(name: string, timeoutMs = 90_000): Promise<Vm> {
  return user.waitForVm(name, (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING, { timeoutMs });
}

async function reaches(from: Vm, to: Vm): Promise<boolean> {
  const ip = to.status!.ip.split("/")[0]!;
  try {
    await waitFor(`${from.name} -> ${to.name}`, async () => ((await run(pingArgv(ip, { count: 1, waitS: 1 }), { netns: nsOf(from), allowFail: true })).exitCode === 0 ? true : undefined), 30_000);
    return true;
  } catch {
    return false;
  }
}

beforeAll(async () => {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const cfg = join(dir, "coordinator.toml");
  writeFileSync(
    cfg,
    [
      "[agents]",
      `lease_ttl_seconds = ${LEASE_TTL_S}`,
      "heartbeat_interval_ms = 500",
      "[host_loss]",
      'policy = "keep"',
      `grace_seconds = ${GRACE_S}`,
    ].join("\n") + "\n",
  );
  // The relays listen before the agents start; they dial the coordinator's socket per connection.
  for (let i = 0; i < 2; i++) {
    relays[i] = new Relay(join(dir, `relay-${i}.sock`), join(dir, "coordinator.sock"));
    await relays[i]!.listen();
  }
  cluster = await startLocalCluster({
    prefix,
    dir,
    hosts: 2,
    coordinatorArgs: ["--config", cfg],
    agentCoordinator: (i) => `unix:${relays[i]!.path}`,
  }).catch(async (e) => {
    await Promise.all(relays.map((r) => r?.cut()));
    throw e;
  });
  const admin = cluster.client();
  user = cluster.client((await admin.createToken({ name: `u${prefix}`, role: Role.ROLE_USER })).secret);
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
  await Promise.all(relays.map((r) => r?.cut()));
  expect(await labLeftovers(prefix)).toEqual([]);
}, 90_000);

describe("host loss and control-plane loss (coordinator + 2 agent processes, sandbox VMs)", () => {
  it("keep policy: a SIGSTOPped agent's host turns UNREACHABLE and its VM UNKNOWN, stays put past the grace, and is RUNNING again (same process) on return", async () => {
    await user.createVm("keep1", { vcpus: 1, memoryMb: 64, host: "host1" });
    const vm = await running("keep1");
    const ns = nsOf(vm);
    const pids = pidsIn(ns);
    expect(pids).not.toBe("");
    const agent = cluster.agents[0]!;
    process.kill(agent.pid, "SIGSTOP");
    try {
      const unknown = await user.waitForVm("keep1", (v) => v.status?.phase === VmPhase.VM_PHASE_UNKNOWN, { timeoutMs: 30_000 });
      expect(unknown.status?.hostName).toBe("host1");
      const h = await cluster.client().getHost("host1");
      expect(h.state).toBe(HostState.HOST_STATE_UNREACHABLE);
      expect(h.unreachableSince).toBeDefined();
      // Past the grace period: with the keep policy nothing moves, and the VM runs on.
      await new Promise((r) => setTimeout(r, (GRACE_S + 2) * 1000));
      const still = await user.getVm("keep1");
      expect(still.status?.hostName).toBe("host1");
      expect(still.status?.phase).toBe(VmPhase.VM_PHASE_UNKNOWN);
      expect(pidsIn(ns)).toBe(pids);
    } finally {
      process.kill(agent.pid, "SIGCONT");
    }
    const back = await running("keep1", 60_000);
    expect(back.status?.hostName).toBe("host1");
    expect(pidsIn(ns)).toBe(pids);
    await waitFor("host1 READY again", async () => ((await cluster.client().getHost("host1")).state === HostState.HOST_STATE_READY ? true : undefined), 30_000);
    expect((await cluster.client().getHost("host1")).unreachableSince).toBeUndefined();
  }, 120_000);

  it("reschedule policy: a host cut off from the control plane stops the VM itself (fencing) before it runs on the other host; back, it drops it", async () => {
    await user.createVm("move1", { vcpus: 1, memoryMb: 64, hostLoss: { policy: HostLossPolicy.HOST_LOSS_POLICY_RESCHEDULE, graceSeconds: GRACE_S } });
    const vm = await running("move1");
    const from = hostIndex(vm);
    const to = 1 - from;
    const oldNs = nsOf(vm, from);
    const newNs = nsOf(vm, to);
    expect(pidsIn(oldNs)).not.toBe("");
    // Sample both hosts' copies of the VM until it runs on the other host.
    const samples: { at: number; old: boolean; now: boolean }[] = [];
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        samples.push({ at: Date.now(), old: pidsIn(oldNs) !== "", now: pidsIn(newNs) !== "" });
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const cutAt = Date.now();
    await relays[from]!.cut();
    let moved: Vm;
    try {
      moved = await user.waitForVm("move1", (v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING && v.status.hostName === `host${to + 1}`, { timeoutMs: 60_000 });
      await waitFor("the moved VM's process", async () => (pidsIn(newNs) !== "" ? true : undefined), 10_000);
    } catch (e) {
      await relays[from]!.listen();
      throw e;
    } finally {
      sampling = false;
      await sampler;
      samples.push({ at: Date.now(), old: pidsIn(oldNs) !== "", now: pidsIn(newNs) !== "" });
    }
    expect(moved.status?.ip).toBe(vm.status?.ip);
    // The host comes back after the checks, whatever they find.
    const restore = relays[from]!.listen();
    // Not before the lease expired and the grace passed.
    const firstNew = samples.find((s) => s.now);
    expect(firstNew).toBeDefined();
    expect(firstNew!.at - cutAt).toBeGreaterThanOrEqual(GRACE_S * 1000);
    // Never on both hosts at once, and the old host had stopped it before the new one ran it.
    expect(samples.filter((s) => s.old && s.now)).toEqual([]);
    const lastOld = samples.filter((s) => s.old).pop();
    expect(lastOld === undefined || lastOld.at < firstNew!.at).toBe(true);
    expect(pidsIn(oldNs)).toBe("");
    const movedPids = pidsIn(newNs);

    // The host comes back: its agent learns the VM is no longer its own and removes what is left.
    await restore;
    await waitFor(`host${from + 1} READY again`, async () => ((await cluster.client().getHost(`host${from + 1}`)).state === HostState.HOST_STATE_READY ? true : undefined), 60_000);
    await waitFor("the old host's copy removed", async () => (!nsExists(oldNs) ? true : undefined), 30_000);
    const after = await user.getVm("move1");
    expect(after.status?.hostName).toBe(`host${to + 1}`);
    expect(after.status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(pidsIn(newNs)).toBe(movedPids);
  }, 150_000);

  it("with every coordinator stopped, VMs keep running and tenant traffic keeps flowing between hosts; after a restart all resyncs without restarting a VM", async () => {
    await user.createVm("dp1", { vcpus: 1, memoryMb: 64, host: "host1" });
    await user.createVm("dp2", { vcpus: 1, memoryMb: 64, host: "host2" });
    const a = await running("dp1");
    const b = await running("dp2");
    expect(await reaches(a, b)).toBe(true);
    const pidsBefore = [pidsIn(nsOf(a)), pidsIn(nsOf(b))];
    await cluster.stopCoordinator();
    // Longer than the agents' lease and the grace: nothing on the hosts may react to the control plane's absence.
    await new Promise((r) => setTimeout(r, (GRACE_S + 2) * 1000));
    expect(await reaches(a, b)).toBe(true);
    expect(await reaches(b, a)).toBe(true);
    expect([pidsIn(nsOf(a)), pidsIn(nsOf(b))]).toEqual(pidsBefore);
    await cluster.startCoordinator();
    await waitFor(
      "both hosts READY and both VMs RUNNING",
      async () => {
        const hosts = await cluster.client().listHosts();
        const vms = await user.listVms();
        const ok =
          hosts.filter((h) => h.state === HostState.HOST_STATE_READY).length === 2 &&
          ["dp1", "dp2"].every((n) => vms.find((v) => v.name === n)?.status?.phase === VmPhase.VM_PHASE_RUNNING);
        return ok ? true : undefined;
      },
      60_000,
    );
    expect([pidsIn(nsOf(a)), pidsIn(nsOf(b))]).toEqual(pidsBefore);
    expect(await reaches(a, b)).toBe(true);
  }, 150_000);
});
