// Privileged, the whole path with real QEMU guests: coordinator (embedded etcd) and one agent
// daemon in a lab namespace host running the sandbox and qemu drivers. A guest's disk and
// memory (a running process, its boot id) are saved as checkpoints (plain and AES-256-GCM),
// changed, then restored in place and as a clone with its own MAC and address. A wrong key
// changes nothing; a sandbox VM cannot be checkpointed; destroying the VM removes its files.
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { isAlive, type ProcessRef } from "../../common/run.js";
import { startQemuCluster, type QemuCluster } from "../helpers/qemu-cluster.js";
import { VmDesiredState, VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";
import { digestFile } from "../../agent/checkpoint/format.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";

const prefix = `k${randomBytes(3).toString("hex").slice(0, 5)}`;
const dir = `/run/noid-e2e-${prefix}`;
const BOOT_MS = 180_000;

describe("checkpoints and restore with real QEMU guests through coordinator and agent", () => {
  let cluster: LocalCluster;
  let alice: NoidClient;
  let aliceToken = "";
  const qemuPids: ProcessRef[] = [];
  const key = randomBytes(32);
  const keyFile = join(dir, "alice.key");
  let agentDir = "";

  const records = (): QemuRecord[] => {
    const d = join(agentDir, "qemu", "records");
    return existsSync(d) ? readdirSync(d).map((f) => JSON.parse(readFileSync(join(d, f), "utf8")) as QemuRecord) : [];
  };
  const recordOf = (id: string): QemuRecord | undefined => records().find((r) => r.spec.id === id);
  const phase = async (name: string, p: VmPhase, timeoutMs: number): Promise<Vm> =>
    waitFor(`${name} ${VmPhase[p]}`, async () => {
      const v = await alice.getVm(name);
      return v.status?.phase === p ? v : undefined;
    }, timeoutMs);
  const sh = async (vm: string, script: string): Promise<string> => {
    const r = await alice.exec(vm, ["sh", "-c", script]);
    expect(r.exitCode, r.stderr.toString()).toBe(0);
    return r.stdout.toString().trim();
  };
  const ctl = async (args: string[]): Promise<{ code: number; out: string }> => {
    let out = "";
    const code = await noidctl(args, {
      env: { NOID_SERVER: cluster.address, NOID_TOKEN: aliceToken, NOID_CA_FILE: cluster.caFile, NOID_CONFIG: "/nonexistent/config.toml" },
      io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: dir },
    });
    return { code, out };
  };

  let qc: QemuCluster;
  beforeAll(async () => {
    qc = await startQemuCluster(prefix, 4096, qemuPids);
    ({ cluster, alice, aliceToken } = qc);
    agentDir = join(dir, `agent-${cluster.lab.hosts[0]!.name}`);
    writeFileSync(keyFile, key, { mode: 0o600 });
  }, 120_000);

  afterAll(async () => {
    await qc?.stop();
  }, 60_000);

  it("a sandbox VM cannot be checkpointed: FAILED_PRECONDITION naming the capability, nothing recorded", async () => {
    await alice.createVm("sbx", { vcpus: 1, memoryMb: 128 });
    await phase("sbx", VmPhase.VM_PHASE_RUNNING, 60_000);
    await expect(alice.checkpointVm("sbx", "s1")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/driver sandbox does not support checkpoint/) });
    expect(await alice.listCheckpoints("sbx")).toEqual([]);
    await alice.destroyVm("sbx");
  });

  it("saves disk and memory, restores them in place (plain and encrypted) and as a clone with its own MAC and address", async () => {
    const web = await alice.createVm("web", { vcpus: 1, memoryMb: 192, driver: "qemu" });
    const running = await phase("web", VmPhase.VM_PHASE_RUNNING, BOOT_MS);
    const rec = recordOf(web.id)!;
    qemuPids.push(rec.qemu!);
    // State on the disk and in memory: a file, a process and the boot id. / is the VM's own disk.
    expect(await sh("web", "grep ' / ' /proc/mounts")).toMatch(/^\/dev\/vda \/ ext4/);
    const pid = await sh("web", "echo one > /state.txt && sync && (sleep 100007 >/dev/null 2>&1 & echo $!)");
    const bootId = await sh("web", "cat /proc/sys/kernel/random/boot_id");

    // A secret given to an exec earlier is not in the checkpoint (the guest wipes and zeroes it).
    const secret = `ckpt-secret-${randomBytes(12).toString("hex")}`;
    const se = await alice.exec("web", ["sh", "-c", 'test -n "$API_KEY" && echo ok'], { env: { API_KEY: secret } });
    expect(se.stdout.toString()).toBe("ok\n");

    // Plain through noidctl, encrypted through the SDK.
    const c1 = await ctl(["checkpoint", "web", "snap1"]);
    expect(c1.code, c1.out).toBe(0);
    expect(c1.out).toMatch(/checkpoint snap1 of web saved on host1/);
    const enc = await alice.checkpointVm("web", "snap2", { key });
    expect(enc).toMatchObject({ name: "snap2", vmName: "web", hostName: "host1", driver: "qemu", encrypted: true });
    await expect(alice.checkpointVm("web", "snap1")).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    // Bad input: clear status, nothing recorded, no VM made.
    await expect(alice.checkpointVm("web", "Bad Name")).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(alice.checkpointVm("web", "short-key", { key: randomBytes(5) })).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/32 bytes/) });
    await expect(alice.restoreVm("web", "snap1", { as: "web" })).rejects.toMatchObject({ code: "ALREADY_EXISTS" });
    await expect(alice.checkpointVm("nosuchvm", "x")).rejects.toMatchObject({ code: "NOT_FOUND" });
    expect((await ctl(["checkpoint", "web", "x", "--encrypt"])).code).toBe(2);
    writeFileSync(join(dir, "bad.key"), "not a key");
    const badKey = await ctl(["checkpoint", "web", "x", "--encrypt", "--key-file", "./bad.key"]);
    expect(badKey.code).toBe(2);
    expect(badKey.out).toMatch(/32 bytes/);
    expect((await alice.listVms()).map((v) => v.name).sort()).toEqual(["web"]);
    // The VM ran on through both.
    expect(await sh("web", `kill -0 ${pid} && cat /state.txt`)).toBe("one");

    // Records match their files on the host.
    const list = await alice.listCheckpoints("web");
    expect(list.map((c) => [c.name, c.encrypted])).toEqual([["snap1", false], ["snap2", true]]);
    for (const c of list) {
      const file = join(agentDir, "checkpoints", web.id, `${c.id}.ckpt`);
      expect(await digestFile(file)).toEqual({ size: c.sizeBytes, sha256: c.sha256 });
      const content = readFileSync(file);
      expect(content.subarray(0, 8).toString()).toBe(c.encrypted ? "NOIDENC1" : "NOIDCKP1");
      if (!c.encrypted) expect(content.includes(Buffer.from(secret)), "the exec's secret is in the checkpoint").toBe(false);
    }
    const lst = await ctl(["checkpoints", "web"]);
    expect(lst.out).toMatch(/snap1\s+web\s+host1\s+qemu\s+\S+\s+no/);
    expect(lst.out).toMatch(/snap2\s+web\s+host1\s+qemu\s+\S+\s+yes/);

    // Change both.
    await sh("web", `kill ${pid}; echo two > /state.txt && sync`);
    const qemuBefore = recordOf(web.id)!.qemu!;

    // Refused, nothing changed: a running VM without --force, an encrypted one without or with a wrong key.
    await expect(alice.restoreVm("web", "snap1")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/--force/) });
    await expect(alice.restoreVm("web", "snap2", { force: true })).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/encrypted/) });
    await expect(alice.restoreVm("web", "snap2", { force: true, key: randomBytes(32) })).rejects.toMatchObject({ code: "PERMISSION_DENIED", message: expect.stringMatching(/wrong key/) });
    await expect(alice.restoreVm("web", "nope", { force: true })).rejects.toMatchObject({ code: "NOT_FOUND" });
    expect(recordOf(web.id)!.qemu).toEqual(qemuBefore);
    expect(await sh("web", `cat /state.txt; kill -0 ${pid} 2>/dev/null && echo alive || echo gone`)).toBe("two\ngone");

    // In place from the encrypted one, through noidctl with the key file: disk and memory are back.
    const r2 = await ctl(["restore", "web", "snap2", "--key-file", "./alice.key", "--force"]);
    expect(r2.code, r2.out).toBe(0);
    const afterRestore = recordOf(web.id)!;
    qemuPids.push(afterRestore.qemu!);
    expect(afterRestore.qemu!.pid).not.toBe(qemuBefore.pid);
    expect(await sh("web", `cat /state.txt; kill -0 ${pid} && echo alive; cat /proc/sys/kernel/random/boot_id`)).toBe(`one\nalive\n${bootId}`);
    expect((await phase("web", VmPhase.VM_PHASE_RUNNING, 30_000)).status).toMatchObject({ ip: running.status!.ip, mac: running.status!.mac });

    // A clone from the plain one: a second VM, same disk and memory, its own MAC and address.
    await sh("web", "echo three > /state.txt && sync");
    const clone = await alice.restoreVm("web", "snap1", { as: "web2" });
    expect(clone.name).toBe("web2");
    const web2 = await phase("web2", VmPhase.VM_PHASE_RUNNING, 60_000);
    qemuPids.push(recordOf(web2.id)!.qemu!);
    expect(web2.status!.ip).not.toBe(running.status!.ip);
    expect(web2.status!.mac).not.toBe(running.status!.mac);
    expect(web2.spec).toMatchObject({ driver: "qemu", memoryMb: 192, host: "host1" });
    const inside = await sh("web2", `cat /state.txt; kill -0 ${pid} && echo alive; cat /proc/sys/kernel/random/boot_id; cat /sys/class/net/eth0/address; ip -4 addr show dev eth0`);
    const [state, alive, cloneBoot, mac, ...addr] = inside.split("\n");
    expect([state, alive, cloneBoot]).toEqual(["one", "alive", bootId]);
    expect(mac).toBe(web2.status!.mac.toLowerCase());
    expect(addr.join(" ")).toContain(`inet ${web2.status!.ip.split("/")[0]}/`);
    expect(addr.join(" ")).not.toContain(`inet ${running.status!.ip.split("/")[0]}/`);
    // Two VMs, each with its own state.
    expect(await sh("web", "cat /state.txt")).toBe("three");

    // A stopped VM is restored without --force and runs again from the checkpoint (not booted afresh).
    await alice.stopVm("web");
    await phase("web", VmPhase.VM_PHASE_STOPPED, 60_000);
    const back = await alice.restoreVm("web", "snap1");
    expect(back.desiredState).toBe(VmDesiredState.VM_DESIRED_STATE_RUNNING);
    await phase("web", VmPhase.VM_PHASE_RUNNING, 60_000);
    qemuPids.push(recordOf(web.id)!.qemu!);
    expect(await sh("web", `cat /state.txt; kill -0 ${pid} && echo alive; cat /proc/sys/kernel/random/boot_id`)).toBe(`one\nalive\n${bootId}`);
    // It stays running: the stopped desired state from before the restore does not stop it.
    await new Promise((r) => setTimeout(r, 3000));
    expect((await alice.getVm("web")).status?.phase).toBe(VmPhase.VM_PHASE_RUNNING);
    expect(isAlive(recordOf(web.id)!.qemu!)).toBe(true);

    // Audited, without the key.
    const events = await cluster.client().listAuditEvents({ user: "alice" });
    const kinds = events.filter((e) => e.event === "vm.checkpoint" || e.event === "vm.restore").map((e) => `${e.event}:${e.vm}:${e.success}`);
    expect(kinds).toEqual(expect.arrayContaining(["vm.checkpoint:web:true", "vm.restore:web:false", "vm.restore:web:true", "vm.restore:web2:true"]));
    const logs = readdirSync(dir).filter((f) => f.endsWith(".log")).map((f) => readFileSync(join(dir, f), "utf8")).join("\n");
    for (const form of [key.toString("hex"), key.toString("base64")]) expect(logs).not.toContain(form);

    // Destroying the VM removes its checkpoints (records with it, files on the host).
    await alice.destroyVm("web");
    await waitFor("web gone", async () => ((await alice.listVms()).some((v) => v.name === "web") ? undefined : true), 60_000);
    await waitFor("web's checkpoint files removed", async () => (existsSync(join(agentDir, "checkpoints", web.id)) ? undefined : true), 30_000);
    await alice.destroyVm("web2");
    await waitFor("web2 gone", async () => ((await alice.listVms()).some((v) => v.name === "web2") ? undefined : true), 60_000);
  }, 2 * BOOT_MS + 300_000);
});
