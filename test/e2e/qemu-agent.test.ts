// Privileged, the whole path with a real QEMU guest: the built coordinator (embedded etcd) and
// one real agent daemon in a lab namespace host running the sandbox and qemu drivers. A VM
// with driver "qemu" boots the project's guest (deploy/guest/build.sh) under TCG (KVM when it
// works here), runs commands through exec (coordinator -> agent -> guest agent), stops and is
// destroyed; faults (a missing image, a QEMU that dies) end in FAILED with the reason, the
// host's capacity released, and the sandbox VM next to them untouched.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot, waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { startQemuCluster, type QemuCluster } from "../helpers/qemu-cluster.js";
import { isAlive, killProcess, run, type ProcessRef } from "../../common/run.js";
import { HostState, VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";

const prefix = `q${randomBytes(3).toString("hex").slice(0, 5)}`;
const dir = `/run/noid-e2e-${prefix}`;
/** Generous: TCG boots in seconds when idle, much slower on a loaded machine. */
const BOOT_MS = 180_000;

describe("agent with the qemu driver: a real guest through coordinator and agent", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  let aliceToken = "";
  let hostNs = "";
  const qemuPids: ProcessRef[] = [];

  const records = (): QemuRecord[] => {
    const d = join(dir, `agent-${cluster.lab.hosts[0]!.name}`, "qemu", "records");
    return existsSync(d) ? readdirSync(d).map((f) => JSON.parse(readFileSync(join(d, f), "utf8")) as QemuRecord) : [];
  };
  const recordOf = (id: string): QemuRecord | undefined => records().find((r) => r.spec.id === id);
  const phase = async (name: string, p: VmPhase, timeoutMs: number): Promise<Vm> =>
    waitFor(`${name} ${VmPhase[p]}`, async () => {
      const v = await alice.getVm(name);
      return v.status?.phase === p ? v : undefined;
    }, timeoutMs);
  const tapExists = async (tap: string): Promise<boolean> => (await run(["ip", "-n", hostNs, "link", "show", "dev", tap], { allowFail: true })).exitCode === 0;
  const sandboxPids = (): string =>
    execFileSync("ip", ["netns", "list"], { encoding: "utf8" })
      .split("\n")
      .map((l) => l.split(" ")[0] ?? "")
      .filter((n) => n.startsWith(`${prefix}-h`) && n.includes("-vm-"))
      .map((n) => `${n}:${execFileSync("ip", ["netns", "pids", n], { encoding: "utf8" }).trim()}`)
      .join(";");

  let qc: QemuCluster;
  beforeAll(async () => {
    qc = await startQemuCluster(prefix, 2048, qemuPids);
    ({ cluster, alice, aliceToken } = qc);
    hostNs = cluster.lab.hosts[0]!.netns;
  }, 120_000);

  afterAll(async () => {
    await qc?.stop();
  }, 60_000);

  it("the host offers both drivers; a VM that names none runs on the first (sandbox)", async () => {
    expect((await cluster.client().getHost("host1")).drivers).toEqual(["sandbox", "qemu"]);
    await alice.createVm("keep", { vcpus: 1, memoryMb: 128 });
    await phase("keep", VmPhase.VM_PHASE_RUNNING, 60_000);
    expect(sandboxPids()).toMatch(/-vm-/);
    expect(records()).toEqual([]);
  });

  it("boots a qemu guest, runs commands in it through exec, adopts it after an agent SIGKILL, stops and destroys it, leaving nothing", async () => {
    const keepBefore = sandboxPids();
    const created = await alice.createVm("guest", { vcpus: 1, memoryMb: 192, driver: "qemu" });
    const vm = await phase("guest", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    expect(vm.status?.hostName).toBe("host1");
    const rec = recordOf(created.id)!;
    expect(rec.qemu).toBeDefined();
    qemuPids.push(rec.qemu!);
    expect(readFileSync(`/proc/${rec.qemu!.pid}/cmdline`, "utf8")).toMatch(/qemu-system-x86_64\0.*-M\0microvm/);
    // The VM's own copy-on-write disk over the shared base image.
    const info = JSON.parse((await run(["qemu-img", "info", "-U", "--output=json", rec.paths.overlay])).stdout) as Record<string, unknown>;
    expect(info["backing-filename"]).toBe(join(repoRoot, ".noid/guest/rootfs.ext4"));

    const uname = await alice.exec("guest", ["uname", "-s"]);
    expect(uname.exitCode, uname.stderr.toString()).toBe(0);
    expect(uname.stdout.toString().trim()).toBe("Linux");
    // It is the guest, not the host: one vCPU and at most 192 MB, as the spec said.
    const cpus = await alice.exec("guest", ["sh", "-c", "grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo"]);
    const [n, mem] = cpus.stdout.toString().trim().split("\n");
    expect(n).toBe("1");
    expect(Number(/(\d+)/.exec(mem ?? "")?.[1])).toBeLessThanOrEqual(192 * 1024);
    const env = await alice.exec("guest", ["sh", "-c", 'echo "$GREETING"; echo oops >&2; exit 3'], { env: { GREETING: "hello guest" } });
    expect(env.stdout.toString()).toBe("hello guest\n");
    expect(env.stderr.toString()).toBe("oops\n");
    expect(env.exitCode).toBe(3);
    // The same through noidctl.
    let out = "";
    const code = await noidctl(["exec", "guest", "--", "cat", "/sys/class/net/eth0/address"], {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" },
    });
    expect(code, out).toBe(0);
    expect(out.trim()).toBe(vm.status!.mac.toLowerCase());

    // The agent is SIGKILLed and restarted: both drivers adopt their VMs, nothing is restarted.
    const bootId = (await alice.exec("guest", ["cat", "/proc/sys/kernel/random/boot_id"])).stdout.toString().trim();
    await killProcess(cluster.agents[0]!, 0);
    await cluster.startAgent(0);
    await waitFor("host1 READY again", async () => ((await cluster.client().getHost("host1")).state === HostState.HOST_STATE_READY ? true : undefined), 60_000);
    await new Promise((r) => setTimeout(r, 2000)); // time to reconcile (it would recreate what it did not adopt)
    expect(recordOf(created.id)?.qemu).toEqual(rec.qemu);
    expect(isAlive(rec.qemu!)).toBe(true);
    const again = await waitFor("exec after the agent restart", async () => {
      const r = await alice.exec("guest", ["cat", "/proc/sys/kernel/random/boot_id"]);
      return r.exitCode === 0 ? r : undefined;
    }, 30_000);
    expect(again.stdout.toString().trim()).toBe(bootId);
    expect(sandboxPids()).toBe(keepBefore);
    expect((await alice.getVm("guest")).status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);

    await alice.stopVm("guest");
    await phase("guest", VmPhase.VM_PHASE_STOPPED, 60_000);
    expect(isAlive(rec.qemu!)).toBe(false);
    expect(existsSync(rec.paths.overlay)).toBe(true); // stopped keeps its disk

    await alice.destroyVm("guest");
    await waitFor("guest gone", async () => ((await alice.listVms()).some((v) => v.name === "guest") ? undefined : true), 60_000);
    expect(recordOf(created.id)).toBeUndefined();
    expect(existsSync(rec.paths.dir)).toBe(false);
    expect(await tapExists(rec.tap)).toBe(false);
    expect(sandboxPids()).toBe(keepBefore);
  }, BOOT_MS + 120_000);

  it("a missing image and a QEMU that dies end in FAILED with the reason and release the host; unknown drivers are refused", async () => {
    const keepBefore = sandboxPids();
    const allocated = async () => (await cluster.client().getHost("host1")).allocated?.vcpus;
    expect(await allocated()).toBe(1); // "keep"

    // Bad input the coordinator can judge is refused before anything is stored.
    await expect(alice.createVm("odd", { driver: "vmware" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(alice.getVm("odd")).rejects.toMatchObject({ code: "NOT_FOUND" });
    // A driver no host offers: kept PENDING, saying why, and never sent to this host.
    await expect(alice.createVm("fc", { driver: "firecracker" })).rejects.toMatchObject({ code: "RESOURCE_EXHAUSTED" });
    expect((await alice.getVm("fc")).status).toMatchObject({ phase: VmPhase.VM_PHASE_PENDING, hostName: "", reason: expect.stringMatching(/lacks driver firecracker/) });
    await alice.destroyVm("fc");

    // An image the host does not have: the agent fails the VM and the coordinator frees its place.
    await alice.createVm("noimg", { vcpus: 2, memoryMb: 128, driver: "qemu", image: "no-such-image" });
    const failed = await phase("noimg", VmPhase.VM_PHASE_FAILED, 60_000);
    expect(failed.status?.reason).toMatch(/^on host host1: create: creating qemu VM \w+: image "no-such-image" not found/);
    expect(failed.status?.hostName).toBe("");
    expect(await allocated()).toBe(1);
    expect(recordOf(failed.id)).toBeUndefined();
    let out = "";
    const code = await noidctl(["info", "noimg", "-o", "wide"], {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" },
    });
    expect(code, out).toBe(0);
    expect(out).toContain('image "no-such-image" not found');
    await alice.destroyVm("noimg");
    await expect(alice.getVm("noimg")).rejects.toMatchObject({ code: "NOT_FOUND" });

    // A QEMU process that dies is noticed by the agent's resync and reported with why.
    const crash = await alice.createVm("crash", { vcpus: 1, memoryMb: 128, driver: "qemu" });
    await phase("crash", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    const rec = recordOf(crash.id)!;
    qemuPids.push(rec.qemu!);
    expect(await allocated()).toBe(2);
    process.kill(rec.qemu!.pid, "SIGKILL");
    const dead = await phase("crash", VmPhase.VM_PHASE_FAILED, 60_000);
    expect(dead.status?.reason).toMatch(new RegExp(`^on host host1: qemu process ${rec.qemu!.pid} exited`));
    expect(await allocated()).toBe(1);
    await waitFor("the crashed VM's remains removed", async () => (recordOf(crash.id) || existsSync(rec.paths.dir) ? undefined : true), 30_000);
    expect(await tapExists(rec.tap)).toBe(false);
    expect(sandboxPids()).toBe(keepBefore);
    expect((await alice.getVm("keep")).status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    await alice.destroyVm("crash");
  }, BOOT_MS + 120_000);
});
