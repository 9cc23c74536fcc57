// Privileged, the whole path with real QEMU guests (TCG) across namespace hosts: coordinator
// (embedded etcd) and three agent daemons. A tenant VM on host3 pings a QEMU VM on host1 while
// it moves to host2 (`noidctl migrate`): afterwards the VM answers on the same address and MAC
// from host2 with its memory intact (a file in a tmpfs, a process, its boot id), host1 has
// nothing of it left, and the lost pings are printed. Bad input changes nothing, and a
// transfer that cannot happen (the source's transfer port blocked) leaves the VM running on
// its host, and a target that fails the VM after the switch sends it back to its source.
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { waitFor, type LocalCluster } from "../../deploy/cluster.js";
import { isAlive, killProcess, processRef, run, spawnDetached, type ProcessRef } from "../../common/run.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { vmNetns } from "../../agent/drivers/sandbox/names.js";
import { tapName, vmPaths } from "../../agent/drivers/qemu/names.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";
import { MIGRATION_PORT } from "../../agent/migration/transfer.js";
import { startQemuCluster, type QemuCluster } from "../helpers/qemu-cluster.js";
import { VmPhase, type NoidClient, type Vm } from "../../sdk/index.js";
import { run as noidctl } from "../../cli/program.js";

const prefix = `mg${randomBytes(3).toString("hex").slice(0, 4)}`;
const dir = `/run/noid-e2e-${prefix}`;
const BOOT_MS = 180_000;

describe("migration of a running QEMU VM across hosts over the mesh", () => {
  let qc: QemuCluster;
  let cluster: LocalCluster;
  let alice: NoidClient;
  let admin: NoidClient;
  let aliceToken = "";
  const qemuPids: ProcessRef[] = [];
  const pingers: ProcessRef[] = [];

  const agentDir = (host: number): string => join(dir, `agent-${cluster.lab.hosts[host - 1]!.name}`);
  const hostNs = (host: number): string => cluster.lab.hosts[host - 1]!.netns;
  const recordOf = (host: number, id: string): QemuRecord | undefined => {
    const d = join(agentDir(host), "qemu", "records");
    if (!existsSync(d)) return undefined;
    return readdirSync(d)
      .map((f) => JSON.parse(readFileSync(join(d, f), "utf8")) as QemuRecord)
      .find((r) => r.spec.id === id);
  };
  const phase = async (name: string, p: VmPhase, timeoutMs: number): Promise<Vm> =>
    waitFor(`${name} ${VmPhase[p]}`, async () => {
      const v = await alice.getVm(name);
      return v.status?.phase === p ? v : undefined;
    }, timeoutMs);
  /**
   * Setup, not the behaviour under test: a QEMU guest booting under TCG on this loaded machine
   * may miss its boot timeout (FAILED); it is started again, three tries at most.
   */
  const booted = async (name: string): Promise<Vm> => {
    for (let i = 0; ; i++) {
      const v = await waitFor(`${name} running or failed`, async () => {
        const x = await alice.getVm(name);
        return x.status?.phase === VmPhase.VM_PHASE_RUNNING || x.status?.phase === VmPhase.VM_PHASE_FAILED ? x : undefined;
      }, BOOT_MS);
      if (v.status?.phase === VmPhase.VM_PHASE_RUNNING) return v;
      if (i === 2 || !/did not answer within/.test(v.status?.reason ?? "")) throw new Error(`${name} failed: ${v.status?.reason}`);
      console.log(`${name} missed its boot timeout under load; starting it again`);
      await alice.startVm(name);
    }
  };
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
  let peerNs = "";
  const pingOnce = async (ip: string): Promise<boolean> => (await run(pingArgv(ip, { count: 1, waitS: 1 }), { netns: peerNs, allowFail: true })).exitCode === 0;

  beforeAll(async () => {
    qc = await startQemuCluster(prefix, 4096, qemuPids, { hosts: 3 });
    ({ cluster, alice, aliceToken } = qc);
    admin = cluster.client();
  }, 180_000);

  afterAll(async () => {
    for (const p of pingers) if (isAlive(p)) await killProcess(p).catch(() => undefined);
    for (const h of [1, 2, 3]) await run(["nft", "delete", "table", "inet", `${prefix}block`], { netns: hostNs(h), allowFail: true }).catch(() => undefined);
    await qc?.stop();
  }, 60_000);

  it("moves the VM with its MAC, address and memory while a peer pings it; bad input and a failed transfer change nothing", async () => {
    const peer = await alice.createVm("peer", { vcpus: 1, memoryMb: 128, driver: "sandbox", host: "host3" });
    const mig = await alice.createVm("mig", { vcpus: 1, memoryMb: 192, driver: "qemu", host: "host1" });
    await phase("peer", VmPhase.VM_PHASE_RUNNING, 60_000);
    const before = await booted("mig");
    const rec1 = recordOf(1, mig.id)!;
    qemuPids.push(rec1.qemu!);
    peerNs = vmNetns(`${prefix}-${cluster.lab.hosts[2]!.name}`, peer.id);
    const ip = before.status!.ip.split("/")[0]!;
    const mac = before.status!.mac.toLowerCase();
    await waitFor("the peer reaches the VM on host1", async () => ((await pingOnce(ip)) ? true : undefined), 60_000);

    // State only memory holds: a file in a fresh tmpfs, a process, the boot id.
    const mark = randomBytes(8).toString("hex");
    const pid = await sh("mig", `mkdir -p /mnt/mem && mount -t tmpfs tmpfs /mnt/mem && echo ${mark} > /mnt/mem/mark && (sleep 100009 >/dev/null 2>&1 & echo $!)`);
    const bootId = await sh("mig", "cat /proc/sys/kernel/random/boot_id");
    const unchanged = async (): Promise<void> => {
      const v = await alice.getVm("mig");
      expect(v.status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "host1", ip: before.status!.ip, mac: before.status!.mac, migrationId: "" });
      expect(v.spec?.host).toBe("host1");
      expect(recordOf(1, mig.id)!.qemu).toEqual(rec1.qemu);
      expect(recordOf(2, mig.id)).toBeUndefined();
    };

    // Bad input: clear status, nothing changed.
    await expect(alice.migrateVm("mig", "host1")).rejects.toMatchObject({ code: "INVALID_ARGUMENT", message: expect.stringMatching(/already runs on host1/) });
    await expect(alice.migrateVm("mig", "nohost")).rejects.toMatchObject({ code: "NOT_FOUND" });
    await expect(alice.migrateVm("nosuchvm", "host2")).rejects.toMatchObject({ code: "NOT_FOUND" });
    await admin.cordonHost("host2");
    await expect(alice.migrateVm("mig", "host2")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/cordoned/) });
    await admin.uncordonHost("host2");
    const filler = await alice.createVm("filler", { vcpus: 1, memoryMb: 4000, driver: "sandbox", host: "host2" });
    await phase("filler", VmPhase.VM_PHASE_RUNNING, 60_000);
    await expect(alice.migrateVm("mig", "host2")).rejects.toMatchObject({ code: "RESOURCE_EXHAUSTED", message: expect.stringMatching(/no room/) });
    await alice.destroyVm("filler");
    await waitFor("filler gone", async () => ((await alice.listVms()).some((v) => v.name === "filler") ? undefined : true), 60_000);
    // Exposed ports do not follow a VM yet: refused until they are unexposed.
    await alice.exposePort("mig", "18080:80/tcp");
    await expect(alice.migrateVm("mig", "host2")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/exposed port/) });
    await alice.unexposePort("mig", "18080/tcp");
    // A driver without snapshots: refused by the source's agent before anything changed.
    await expect(alice.migrateVm("peer", "host2")).rejects.toMatchObject({
      code: "FAILED_PRECONDITION",
      message: expect.stringMatching(/driver sandbox does not support checkpoint and restore/),
    });
    expect((await alice.getVm("peer")).status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "host3" });
    const idle = await alice.createVm("idle", { vcpus: 1, memoryMb: 64, driver: "sandbox", host: "host3" });
    await phase("idle", VmPhase.VM_PHASE_RUNNING, 60_000);
    await alice.stopVm("idle");
    await phase("idle", VmPhase.VM_PHASE_STOPPED, 60_000);
    await expect(alice.migrateVm("idle", "host1")).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/not running \(STOPPED\)/) });
    expect(idle.id).toBeTruthy();
    await unchanged();

    // A transfer that cannot happen (the source's transfer port refuses connections): the
    // migration aborts before the switch and the VM runs on at host1, state intact.
    const block = `${prefix}block`;
    await run(["nft", "add", "table", "inet", block], { netns: hostNs(1) });
    await run(["nft", "add", "chain", "inet", block, "in", "{ type filter hook input priority -10; }"], { netns: hostNs(1) });
    await run(["nft", "add", "rule", "inet", block, "in", "tcp", "dport", String(MIGRATION_PORT), "reject", "with", "tcp", "reset"], { netns: hostNs(1) });
    const failed = await ctl(["migrate", "mig", "--to", "host2"]);
    expect(failed.code, failed.out).not.toBe(0);
    expect(failed.out).toMatch(/transferring VM "mig"'s state from host1 to host2.*the VM runs on at host1/s);
    await run(["nft", "delete", "table", "inet", block], { netns: hostNs(1) });
    await waitFor("the VM answers on host1 again", async () => ((await pingOnce(ip)) ? true : undefined), 60_000);
    expect(await sh("mig", `cat /mnt/mem/mark; kill -0 ${pid} && echo alive`)).toBe(`${mark}\nalive`);
    await unchanged();
    expect(readdirSync(join(agentDir(1), "migrations", mig.id))).toEqual([]);
    expect(existsSync(join(agentDir(2), "migrations", mig.id)) ? readdirSync(join(agentDir(2), "migrations", mig.id)) : []).toEqual([]);

    // A target that fails the VM after the switch (its VM directory is taken by a file, so
    // creating the VM there fails): the VM goes back to host1, where its paused copy resumes.
    const blocker = vmPaths(join(agentDir(2), "qemu", "vms"), mig.id).dir;
    mkdirSync(dirname(blocker), { recursive: true });
    writeFileSync(blocker, "not a directory");
    const bounced = await ctl(["migrate", "mig", "--to", "host2"]);
    expect(bounced.code, bounced.out).not.toBe(0);
    expect(bounced.out).toMatch(/failed on host2 after the move.*it runs on at host1/s);
    await waitFor("the VM answers on host1 after coming back", async () => ((await pingOnce(ip)) ? true : undefined), 60_000);
    expect(await sh("mig", `cat /mnt/mem/mark; kill -0 ${pid} && echo alive; cat /proc/sys/kernel/random/boot_id`)).toBe(`${mark}\nalive\n${bootId}`);
    expect((await alice.getVm("mig")).status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "host1", ip: before.status!.ip, mac: before.status!.mac, migrationId: "" });
    expect(recordOf(1, mig.id)!.qemu).toEqual(rec1.qemu);
    await waitFor("host2 cleaned up after the failed VM", async () => (!recordOf(2, mig.id) && !existsSync(blocker) ? true : undefined), 60_000);
    expect(existsSync(join(agentDir(2), "migrations", mig.id)) ? readdirSync(join(agentDir(2), "migrations", mig.id)) : []).toEqual([]);

    // The move, with the peer pinging all along (five a second, each with its timestamp).
    const pingLog = join(dir, "ping.log");
    const pinger = processRef(await spawnDetached(["ping", "-n", "-D", "-O", "-i", "0.2", ip], { netns: peerNs, logFile: pingLog }))!;
    pingers.push(pinger);
    await waitFor("pings answered before the move", async () => (/bytes from/.test(readFileSync(pingLog, "utf8")) ? true : undefined), 30_000);
    const moved = await ctl(["migrate", "mig", "--to", "host2"]);
    expect(moved.code, moved.out).toBe(0);
    expect(moved.out).toMatch(/VM mig moved from host1 to host2/);
    const after = await alice.getVm("mig");
    expect(after.status).toMatchObject({ phase: VmPhase.VM_PHASE_RUNNING, hostName: "host2", ip: before.status!.ip, mac: before.status!.mac, migrationId: "" });
    expect(after.spec?.host).toBe("host2");
    const rec2 = recordOf(2, mig.id)!;
    qemuPids.push(rec2.qemu!);
    expect(isAlive(rec2.qemu!)).toBe(true);
    // Answers again from host2, then the pinger's count.
    await waitFor("the peer reaches the VM on host2", async () => ((await pingOnce(ip)) ? true : undefined), 60_000);
    const sentAtMove = (readFileSync(pingLog, "utf8").match(/icmp_seq=(\d+)/g) ?? []).length;
    await waitFor("the pinger's replies resume", async () => {
      const lines = readFileSync(pingLog, "utf8").trim().split("\n");
      return lines.slice(-3).some((l) => /bytes from/.test(l)) && lines.length > sentAtMove + 3 ? true : undefined;
    }, 30_000);
    process.kill(pinger.pid, "SIGINT");
    await waitFor("the pinger ends", async () => (isAlive(pinger) ? undefined : true), 10_000);
    const log = readFileSync(pingLog, "utf8");
    const seqs = [...log.matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1]));
    const answered = new Set([...log.matchAll(/bytes from .*icmp_seq=(\d+)/g)].map((m) => Number(m[1])));
    const sent = Math.max(...seqs);
    const steps = readFileSync(join(dir, "coordinator.log"), "utf8").split("\n").find((l) => l.includes('"VM migrated"')) ?? "";
    console.log(`migration: ${sent} pings sent, ${sent - answered.size} lost during the move; noidctl: ${moved.out.split("\n")[0]}; steps: ${steps.replace(/.*"bytes"/, '"bytes"').slice(0, 200)}`);
    expect(answered.has(sent) || answered.has(sent - 1)).toBe(true);

    // Same guest: memory (tmpfs file, process, boot id), MAC and address.
    const inside = await sh("mig", `cat /mnt/mem/mark; kill -0 ${pid} && echo alive; cat /proc/sys/kernel/random/boot_id; cat /sys/class/net/eth0/address; ip -4 addr show dev eth0`);
    const [m, alive, boot, guestMac, ...addr] = inside.split("\n");
    expect([m, alive, boot, guestMac]).toEqual([mark, "alive", bootId, mac]);
    expect(addr.join(" ")).toContain(`inet ${ip}/`);

    // host1 has nothing of it left: QEMU, record, TAP, state files; its capacity is free.
    await waitFor("the source released the VM", async () => (!isAlive(rec1.qemu!) && !recordOf(1, mig.id) ? true : undefined), 60_000);
    const taps = await run(["ip", "-o", "link", "show"], { netns: hostNs(1) });
    expect(taps.stdout).not.toContain(tapName(mig.id));
    expect(readdirSync(join(agentDir(1), "migrations"))).not.toContain(`${mig.id}.ckpt`);
    expect(existsSync(join(agentDir(1), "migrations", mig.id)) ? readdirSync(join(agentDir(1), "migrations", mig.id)) : []).toEqual([]);
    expect(existsSync(join(agentDir(2), "migrations", mig.id)) ? readdirSync(join(agentDir(2), "migrations", mig.id)) : []).toEqual([]);
    const hosts = await admin.listHosts();
    expect(hosts.find((h) => h.name === "host1")?.allocated).toMatchObject({ memoryMb: 0 });
    expect(hosts.find((h) => h.name === "host2")?.allocated).toMatchObject({ memoryMb: 192 });

    // Audited: the failed attempt and the move.
    const events = (await admin.listAuditEvents({ user: "alice" })).filter((e) => e.event === "vm.migrate");
    expect(events.map((e) => `${e.vm}:${e.host}:${e.success}`)).toEqual(expect.arrayContaining(["mig:host2:false", "mig:host2:true"]));
    expect(events.some((e) => !e.success && /back on host1/.test(e.detail))).toBe(true);

    await alice.destroyVm("mig");
    await alice.destroyVm("peer");
    await alice.destroyVm("idle");
    await waitFor("VMs gone", async () => ((await alice.listVms()).length === 0 ? true : undefined), 90_000);
  }, 4 * BOOT_MS + 400_000);
});
