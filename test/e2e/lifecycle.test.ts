// Privileged, the whole path: pause, resume and restart, the serial console, VM logs and the
// agent's own logs, through the built coordinator and a real agent (sandbox and qemu drivers)
// in a lab namespace host. The sandbox VM's processes are frozen with the cgroup freezer (a
// counter stops counting), a QEMU guest's vCPUs with QMP stop (it stops answering pings);
// both stay paused across an agent restart. The QEMU console takes a command and shows its
// output; its log keeps what the console printed.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { startQemuCluster, type QemuCluster } from "../helpers/qemu-cluster.js";
import { isAlive, killProcess, processRef, run, type ProcessRef } from "../../common/run.js";
import { HostState, VmDesiredState, VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";
import type { SandboxRecord } from "../../agent/drivers/sandbox/records.js";

const prefix = `l${randomBytes(3).toString("hex").slice(0, 5)}`;
const dir = `/run/noid-e2e-${prefix}`;
const BOOT_MS = 180_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("pause, resume, restart, console and logs through coordinator and agent", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  let aliceToken = "";
  let hostNs = "";
  const qemuPids: ProcessRef[] = [];
  const extraPids: ProcessRef[] = [];
  let qc: QemuCluster;

  const agentDir = () => join(dir, `agent-${cluster.lab.hosts[0]!.name}`);
  const qemuRecord = (id: string): QemuRecord | undefined => {
    const d = join(agentDir(), "qemu", "records");
    return existsSync(d) ? readdirSync(d).map((f) => JSON.parse(readFileSync(join(d, f), "utf8")) as QemuRecord).find((r) => r.spec.id === id) : undefined;
  };
  const sandboxRecord = (id: string): SandboxRecord | undefined => {
    const d = join(agentDir(), "sandbox");
    return readdirSync(d)
      .filter((f) => f.endsWith(".json"))
      .map((f) => JSON.parse(readFileSync(join(d, f), "utf8")) as SandboxRecord)
      .find((r) => r.spec.id === id);
  };
  const phase = async (name: string, p: VmPhase, timeoutMs: number): Promise<Vm> =>
    waitFor(`${name} ${VmPhase[p]}`, async () => {
      const v = await alice.getVm(name);
      return v.status?.phase === p ? v : undefined;
    }, timeoutMs);
  const cli = async (args: string[], token: string): Promise<{ code: number; out: string; err: string }> => {
    let out = "";
    let err = "";
    const code = await noidctl(args, {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: token, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (err += x), readStdin: async () => "", isTTY: false, cwd: "/" },
    });
    return { code, out, err };
  };
  const restartAgent = async () => {
    await killProcess(cluster.agents[0]!, 0);
    await cluster.startAgent(0);
    await waitFor("host1 READY again", async () => ((await cluster.client().getHost("host1")).state === HostState.HOST_STATE_READY ? true : undefined), 60_000);
    // Time to reconcile: a pass that wanted to resume or recreate the VM would have run by now.
    await sleep(3000);
  };
  /** The record as stored, for "nothing changed" checks. */
  const unchanged = async (name: string, before: Vm) => {
    const now = await alice.getVm(name);
    expect({ desired: now.desiredState, phase: now.status?.phase, restart: now.status?.restartPending, at: now.status?.updatedAt }).toEqual({
      desired: before.desiredState,
      phase: before.status?.phase,
      restart: before.status?.restartPending,
      at: before.status?.updatedAt,
    });
  };

  beforeAll(async () => {
    qc = await startQemuCluster(prefix, 2048, qemuPids);
    ({ cluster, alice, aliceToken } = qc);
    hostNs = cluster.lab.hosts[0]!.netns;
  }, 120_000);

  afterAll(async () => {
    for (const p of extraPids) if (isAlive(p)) await killProcess(p).catch(() => undefined);
    await qc?.stop();
  }, 60_000);

  it("sandbox: pause freezes the VM's processes (also across an agent restart), resume continues them; bad input changes nothing", async () => {
    const host = await cluster.client().getHost("host1");
    expect(host.driverCapabilities.find((c) => c.driver === "sandbox")?.capabilities).toEqual(expect.arrayContaining(["exec", "pause", "logs"]));
    expect(host.driverCapabilities.find((c) => c.driver === "sandbox")?.capabilities).not.toContain("console");
    expect(host.driverCapabilities.find((c) => c.driver === "qemu")?.capabilities).toEqual(expect.arrayContaining(["pause", "console", "logs"]));

    const box = await alice.createVm("box", { vcpus: 1, memoryMb: 128 });
    await phase("box", VmPhase.VM_PHASE_RUNNING, 60_000);
    // A counter inside the VM (its network namespace), writing to a file the test reads.
    const counter = join(dir, "counter");
    const started = await alice.exec("box", ["sh", "-c", `(i=0; while :; do i=$((i+1)); echo $i > ${counter}; sleep 0.05; done) </dev/null >/dev/null 2>&1 & echo $!`]);
    const pid = Number(started.stdout.toString().trim());
    const ref = processRef(pid);
    expect(ref, started.stderr.toString()).toBeDefined();
    extraPids.push(ref!);
    const count = () => Number(readFileSync(counter, "utf8").trim() || "0");
    const advances = async () => {
      const a = count();
      await waitFor("the counter to advance", async () => (count() > a ? true : undefined), 30_000);
    };
    await waitFor("the counter file", async () => (existsSync(counter) ? true : undefined), 10_000);
    await advances();

    // Bad input: resuming a running VM, pausing a stopped one: FAILED_PRECONDITION, nothing changed.
    const running = await alice.getVm("box");
    await expect(alice.resumeVm("box")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/not paused \(RUNNING\)/) });
    await unchanged("box", running);
    await alice.createVm("idle", { vcpus: 1, memoryMb: 64 });
    await phase("idle", VmPhase.VM_PHASE_RUNNING, 60_000);
    await alice.stopVm("idle");
    const stopped = await phase("idle", VmPhase.VM_PHASE_STOPPED, 60_000);
    await expect(alice.pauseVm("idle")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/not running \(STOPPED\)/) });
    await expect(alice.restartVm("idle")).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    await unchanged("idle", stopped);
    // A driver without a console says so.
    const con = alice.console("box", () => undefined);
    await expect(con.closed).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/driver sandbox does not support console/) });

    // Pause: PAUSED, and the counter stands still.
    const paused = await alice.pauseVm("box");
    expect(paused.desiredState).toBe(VmDesiredState.VM_DESIRED_STATE_PAUSED);
    await phase("box", VmPhase.VM_PHASE_PAUSED, 30_000);
    const frozenAt = count();
    await sleep(1500);
    expect(count()).toBe(frozenAt);
    expect(readFileSync(`/proc/${pid}/status`, "utf8")).toMatch(/^State:\s+[SD]/m); // frozen, not stopped by a signal (T)
    const init = sandboxRecord(box.id)!.init!;

    // The agent restarts: it finds the VM paused and leaves it so (same init, still frozen).
    await restartAgent();
    expect((await alice.getVm("box")).status?.phase).toBe(VmPhase.VM_PHASE_PAUSED);
    expect(sandboxRecord(box.id)?.init).toEqual(init);
    expect(count()).toBe(frozenAt);

    // Resume: RUNNING, and it counts again.
    await alice.resumeVm("box");
    await phase("box", VmPhase.VM_PHASE_RUNNING, 30_000);
    await advances();
    await killProcess(ref!);

    const events = (await cluster.client().listAuditEvents({ vm: "box" })).map((e) => e.event);
    expect(events).toEqual(expect.arrayContaining(["vm.pause", "vm.resume"]));
    await alice.destroyVm("idle");
  }, 240_000);

  it("sandbox: restart stops and starts the VM (a new init), its log shows both; noidctl logs reads it", async () => {
    const box = await alice.getVm("box");
    const init = sandboxRecord(box.id)!.init!;
    const { code, out, err } = await cli(["restart", "box"], aliceToken);
    expect(code, err).toBe(0);
    expect(out).toMatch(/vm\/box restarting/);
    await waitFor("box restarted", async () => {
      const v = await alice.getVm("box");
      const r = sandboxRecord(box.id);
      return v.status?.phase === VmPhase.VM_PHASE_RUNNING && !v.status.restartPending && r?.init && r.init.pid !== init.pid ? v : undefined;
    }, 60_000);
    expect(isAlive(init)).toBe(false);
    const logs = await cli(["logs", "box"], aliceToken);
    expect(logs.code, logs.err).toBe(0);
    expect(logs.out.match(/noid-sandbox: init \d+ started/g)?.length).toBeGreaterThanOrEqual(2);
    expect(logs.out).toContain(`init ${init.pid} stopped`);
    const last = await cli(["logs", "box", "--tail", "1"], aliceToken);
    expect(last.out.trim().split("\n")).toHaveLength(1);
    expect(last.out).toMatch(/init \d+ started/);
    expect((await cluster.client().listAuditEvents({ vm: "box" })).map((e) => e.event)).toContain("vm.restart");

    // Destroyed, the VM's freezer cgroup goes with it (and the agent's parent with its last VM).
    const freezer = sandboxRecord(box.id)!.freezer!;
    expect(existsSync(freezer)).toBe(true);
    await alice.destroyVm("box");
    await waitFor("box gone", async () => ((await alice.listVms()).some((v) => v.name === "box") ? undefined : true), 60_000);
    expect(existsSync(freezer)).toBe(false);
    expect(existsSync(join(freezer, ".."))).toBe(false);
  }, 120_000);

  it("noidctl logs --host: the agent's recent JSON log lines, for admins only", async () => {
    const { code, out, err } = await cli(["logs", "--host", "host1", "--tail", "50"], cluster.adminToken);
    expect(code, err).toBe(0);
    const lines = out.trim().split("\n");
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThanOrEqual(50);
    for (const l of lines) expect(JSON.parse(l)).toMatchObject({ host: "host1", level: expect.any(Number) });
    const all = await cluster.client().hostLogs("host1");
    expect(all.some((l) => (JSON.parse(l) as { msg?: string }).msg === "agent started")).toBe(true);
    const denied = await cli(["logs", "--host", "host1"], aliceToken);
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/permission|may not/i);
    await expect(cluster.client().hostLogs("nohost")).rejects.toMatchObject({ code: "NOT_FOUND" });
  }, 60_000);

  it("qemu: the console takes a command and shows its output, logs keep it; pause stops the guest answering (across an agent restart), resume brings it back", async () => {
    const created = await alice.createVm("guest", { vcpus: 1, memoryMb: 192, driver: "qemu" });
    const vm = await phase("guest", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    const rec = qemuRecord(created.id)!;
    qemuPids.push(rec.qemu!);
    const ip = vm.status!.ip.split("/")[0]!;

    // The console: what is typed reaches the guest's shell on ttyS0; its output comes back.
    let seen = "";
    const con = alice.console("guest", (b) => void (seen += b.toString("utf8")));
    // Follow the log meanwhile: what the console prints is appended to it.
    const ac = new AbortController();
    let followed = "";
    const follow = (async () => {
      for await (const b of alice.vmLogs("guest", { follow: true, tail: 1, signal: ac.signal })) followed += b.toString("utf8");
    })();
    await waitFor("the console's shell to answer", async () => {
      con.write("echo CONSOLE-$((6*7))\n");
      await sleep(1000);
      return seen.includes("CONSOLE-42") ? true : undefined;
    }, 60_000);
    // One console at a time.
    const second = alice.console("guest", () => undefined);
    await expect(second.closed).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/another console/) });
    await waitFor("the followed log to show the console output", async () => (followed.includes("CONSOLE-42") ? true : undefined), 30_000);
    ac.abort();
    await follow;
    con.close();
    await con.closed;
    let log = "";
    for await (const b of alice.vmLogs("guest")) log += b.toString("utf8");
    expect(log).toContain("noid guest up");
    expect(log).toContain("CONSOLE-42");
    expect((await cluster.client().listAuditEvents({ vm: "guest" })).map((e) => e.event)).toContain("vm.console");

    // The guest answers pings from its host (the network's gateway lives there).
    const ping = async () => (await run(pingArgv(ip, { count: 1, waitS: 2 }), { netns: hostNs, allowFail: true })).exitCode === 0;
    await waitFor("the guest to answer pings", async () => ((await ping()) ? true : undefined), 60_000);

    await alice.pauseVm("guest");
    await phase("guest", VmPhase.VM_PHASE_PAUSED, 30_000);
    expect(await ping()).toBe(false);
    await expect(alice.exec("guest", ["true"])).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
    await restartAgent();
    expect((await alice.getVm("guest")).status?.phase).toBe(VmPhase.VM_PHASE_PAUSED);
    expect(qemuRecord(created.id)?.qemu).toEqual(rec.qemu);
    expect(await ping()).toBe(false);

    await alice.resumeVm("guest");
    await phase("guest", VmPhase.VM_PHASE_RUNNING, 30_000);
    await waitFor("the guest to answer pings again", async () => ((await ping()) ? true : undefined), 60_000);
    expect(isAlive(rec.qemu!)).toBe(true);

    await alice.destroyVm("guest");
    await waitFor("guest gone", async () => ((await alice.listVms()).some((v) => v.name === "guest") ? undefined : true), 60_000);
  }, BOOT_MS + 180_000);
});
