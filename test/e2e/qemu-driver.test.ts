// Privileged: the QEMU driver with real microVMs (TCG when KVM does not work here) booting
// the project's own guest (deploy/guest/build.sh). The driver's "host" is a netns this test
// creates, with a bridge the VMs' TAPs plug into. Lifecycle, exec, recover, a dying QEMU,
// limits, bad input and cleanup are the driver contract's (test/e2e/qemu-contract.test.ts).
import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProcessRef, isAlive, run } from "../../common/run.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { QemuDriver } from "../../agent/drivers/qemu/driver.js";
import { TcgTolerantQemu } from "../helpers/tcg-qemu.js";
import { tapName } from "../../agent/drivers/qemu/names.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";

const repo = resolve(import.meta.dirname, "../..");
const guestDir = join(repo, ".noid/guest");
const tag = randomBytes(3).toString("hex");
const netns = `nq-${tag}`;
// Short: QEMU's unix sockets live under it and sun_path is 108 bytes.
const stateDir = mkdtempSync(`/tmp/nq-${tag}-`);

const mkSpec = (name: string, vcpus: number, mac: string, ip: string): VmCreateSpec => ({
  id: `vm-${name}-${tag}`,
  vcpus,
  memoryMb: 192,
  diskGb: 1,
  image: "",
  net: { mac, ip, prefixLen: 24, bridge: "br0" },
});
const a = mkSpec("a", 1, "02:00:00:5a:00:0a", "10.201.0.10");
const b = mkSpec("b", 2, "02:00:00:5a:00:0b", "10.201.0.11");

// A guest kernel panic under TCG is booted once more (see the helper); any other failure is the driver's.
const driver = (): QemuDriver => new TcgTolerantQemu({ stateDir, guestDir, netns, accel: "auto", bootTimeoutMs: 120_000 });
const record = (id: string): QemuRecord => {
  const dir = join(stateDir, "qemu", "records");
  for (const f of readdirSync(dir)) {
    const r = JSON.parse(readFileSync(join(dir, f), "utf8")) as QemuRecord;
    if (r.spec.id === id) return r;
  }
  throw new Error(`no record for ${id}`);
};
const linkExists = async (dev: string): Promise<boolean> =>
  (await run(["ip", "-n", netns, "link", "show", "dev", dev], { allowFail: true })).exitCode === 0;

const refs: ProcessRef[] = [];

beforeAll(async () => {
  await run(["bash", join(repo, "deploy/guest/build.sh")], { timeoutMs: 300_000 });
  await run(["ip", "netns", "add", netns]);
  await run(["ip", "-n", netns, "link", "set", "lo", "up"]);
  await run(["ip", "-n", netns, "link", "add", "br0", "type", "bridge"]);
  await run(["ip", "-n", netns, "addr", "add", "10.201.0.1/24", "dev", "br0"]);
  await run(["ip", "-n", netns, "link", "set", "br0", "up"]);
});

afterAll(async () => {
  const d = driver();
  for (const s of [a, b]) await d.destroy(s.id).catch(() => undefined);
  await run(["ip", "netns", "del", netns], { allowFail: true });
  rmSync(stateDir, { recursive: true, force: true });
});

describe("qemu driver (what the contract does not cover)", () => {
  it("gives each VM its own copy-on-write disk and a TAP on the bridge; the disks stay apart, persist across a restart, and the guests reach each other", async () => {
    const d1 = driver();
    expect(d1.capabilities()).toMatchObject({ exec: true, checkpoint: true, restore: true, resourceLimits: true });

    // Create: a TAP on the bridge and a copy-on-write overlay per VM.
    for (const s of [a, b]) expect((await d1.create(s)).state).toBe("stopped");
    const [ra, rb] = [record(a.id), record(b.id)];
    expect(ra.paths.overlay).not.toBe(rb.paths.overlay);
    for (const r of [ra, rb]) {
      const info = JSON.parse((await run(["qemu-img", "info", "--output=json", r.paths.overlay])).stdout) as Record<string, unknown>;
      expect(info.format).toBe("qcow2");
      expect(info["backing-filename"]).toBe(join(guestDir, "rootfs.ext4"));
      const link = JSON.parse((await run(["ip", "-n", netns, "-j", "link", "show", "dev", r.tap])).stdout) as { master?: string }[];
      expect(link[0]?.master).toBe("br0");
    }

    // Start both at once; start() returns once each guest agent answers.
    const started = await Promise.all([d1.start(a.id), d1.start(b.id)]);
    expect(started.map((v) => v.state)).toEqual(["running", "running"]);
    refs.push(record(a.id).qemu!, record(b.id).qemu!);
    expect((await d1.exec(a.id, ["uname", "-a"])).stdout).toMatch(/^Linux /);
    for (const s of [a, b]) expect((await d1.exec(s.id, ["cat", "/sys/class/net/eth0/address"])).stdout.trim()).toBe(s.net.mac);

    // Separate root disks: a file written in A is not in B, and not in the base image.
    expect((await d1.exec(a.id, ["sh", "-c", "echo mine > /root/marker && sync"])).exitCode).toBe(0);
    expect((await d1.exec(b.id, ["test", "-e", "/root/marker"])).exitCode).toBe(1);
    expect((await d1.exec(a.id, ["sh", "-c", "grep ' / ' /proc/mounts"])).stdout).toMatch(/^\/dev\/vda \/ ext4/);

    // The network: the guest has its address from the kernel command line and answers on the bridge.
    expect((await d1.exec(a.id, ["ip", "-4", "addr", "show", "dev", "eth0"])).stdout).toContain("10.201.0.10/24");
    const ping = await run(pingArgv("10.201.0.11", { waitS: 5 }), { netns, allowFail: true });
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);

    // Pause and resume over QMP.
    expect((await d1.pause(a.id)).state).toBe("paused");
    expect((await d1.inspect(a.id))?.state).toBe("paused");
    expect((await d1.resume(a.id)).state).toBe("running");
    expect((await d1.inspect(a.id))?.reason).toBe("");

    // Stop is graceful (the guest powers off), and the disk survives until destroy: started
    // again, A boots from the same overlay and what it wrote is still there.
    expect((await d1.stop(a.id)).state).toBe("stopped");
    expect(isAlive(refs[0]!)).toBe(false);
    expect(existsSync(ra.paths.overlay)).toBe(true);
    expect((await d1.start(a.id)).state).toBe("running");
    refs.push(record(a.id).qemu!);
    expect((await d1.exec(a.id, ["cat", "/root/marker"])).stdout).toBe("mine\n");

    for (const s of [a, b]) await d1.destroy(s.id);
    expect(refs.some(isAlive)).toBe(false);
    expect(existsSync(ra.paths.dir) || existsSync(rb.paths.dir)).toBe(false);
    for (const s of [a, b]) expect(await linkExists(tapName(s.id))).toBe(false);
  }, 300_000); // TCG boots of two guests, and one again: minutes when other guests boot alongside

  it("restores one saved state as a clone again and again: each time the clone runs on with its own MAC and address, and answers on them", async () => {
    // The clone's identity is set through the guest agent right after the restore, while the
    // device still announces itself after the migration. Taking the link down for it
    // deadlocked the guest kernel in 4 of 55 restores of a loop like this one (a source booted
    // longer before its save); rounds here make such a race likelier to show, not certain.
    const d = driver();
    const src = { ...a, id: `vm-src-${tag}`, net: { ...a.net, mac: "02:00:00:5a:00:1a", ip: "10.201.0.20" } };
    const clone = { ...a, id: `vm-clone-${tag}`, net: { ...a.net, mac: "02:00:00:5a:00:1b", ip: "10.201.0.21" } };
    const saved = mkdtempSync(`/tmp/nq-${tag}-state-`);
    try {
      await d.create(src);
      await d.start(src.id);
      const pid = (await d.exec(src.id, ["sh", "-c", "sleep 100003 >/dev/null 2>&1 & echo $!"])).stdout.trim();
      await d.saveState(src.id, saved);
      refs.push(record(src.id).qemu!);
      // The source runs on alongside its clones, as a clone's source usually does.
      await d.create(clone);
      for (let round = 1; round <= 5; round++) {
        expect((await d.loadState(clone.id, saved, src.net)).state, `round ${round}`).toBe("running");
        refs.push(record(clone.id).qemu!);
        const inside = await d.exec(clone.id, ["sh", "-c", `kill -0 ${pid} && echo alive; cat /sys/class/net/eth0/address; ip -4 addr show dev eth0`], { timeoutMs: 10_000 });
        expect(inside.stdout, `round ${round}`).toMatch(new RegExp(`^alive\\n${clone.net.mac}\\n`));
        expect(inside.stdout, `round ${round}`).toContain(`inet ${clone.net.ip}/24`);
        expect(inside.stdout, `round ${round}`).not.toContain(`inet ${src.net.ip}/`);
        const ping = await run(pingArgv(clone.net.ip, { waitS: 5 }), { netns, allowFail: true });
        expect(ping.exitCode, `round ${round}: ${ping.stdout}${ping.stderr}`).toBe(0);
      }
    } finally {
      for (const s of [src, clone]) await d.destroy(s.id).catch(() => undefined);
      rmSync(saved, { recursive: true, force: true });
    }
    expect(refs.some(isAlive)).toBe(false);
  }, 300_000);

  it("the guest agent answers through saves and continues in a row, and idles without spinning", async () => {
    const d = driver();
    const g = { ...a, id: `vm-agent-${tag}`, net: { ...a.net, mac: "02:00:00:5a:00:2a", ip: "10.201.0.30" } };
    const saved = mkdtempSync(`/tmp/nq-${tag}-saves-`);
    try {
      await d.create(g);
      await d.start(g.id);
      refs.push(record(g.id).qemu!);
      // A migration that fails after the save: scrub (pings of 1 MiB), stop, save, continue.
      // Opening a connection per request let the guest see one connection's close in the middle
      // of the next one's frame: about once in 30 rounds the guest agent lost its framing for good.
      for (let round = 1; round <= 20; round++) {
        const dir = join(saved, String(round));
        mkdirSync(dir);
        await d.saveState(g.id, dir, { keepPaused: true });
        await d.continueSaved(g.id);
        expect((await d.exec(g.id, ["echo", String(round)], { timeoutMs: 10_000 })).stdout, `round ${round}`).toBe(`${round}\n`);
        rmSync(dir, { recursive: true, force: true });
      }
      // With no host connected the guest agent sleeps: the guest's CPU stays idle (it spun
      // before). Between the two reads the driver's connection closes (idle 2 s) and the guest
      // spends 3.5 s with no host connected.
      const uptime = async (): Promise<{ up: number; idle: number }> => {
        const [up, idle] = (await d.exec(g.id, ["cat", "/proc/uptime"])).stdout.trim().split(" ").map(Number);
        return { up: up!, idle: idle! };
      };
      const u1 = await uptime();
      await new Promise((r) => setTimeout(r, 5500));
      const u2 = await uptime();
      expect(u2.idle - u1.idle, `idle ${u2.idle - u1.idle} s of ${u2.up - u1.up} s`).toBeGreaterThan(0.8 * (u2.up - u1.up));
    } finally {
      await d.destroy(g.id).catch(() => undefined);
      rmSync(saved, { recursive: true, force: true });
    }
    expect(refs.some(isAlive)).toBe(false);
  }, 300_000);

  it("reports a guest that cannot boot as failed, with the console's reason, and cleans it up", async () => {
    // A real kernel with an initramfs that is not one: it panics, and panic=-1 with -no-reboot ends QEMU.
    const broken = mkdtempSync(`/tmp/nq-${tag}-broken-`);
    const spec = { ...a, id: `vm-broken-${tag}`, net: { ...a.net, mac: "02:00:00:5a:00:0c", ip: "10.201.0.12" } };
    const d = new QemuDriver({ stateDir, guestDir: broken, netns, bootTimeoutMs: 60_000 });
    try {
      symlinkSync(join(guestDir, "vmlinuz"), join(broken, "vmlinuz"));
      symlinkSync(join(guestDir, "rootfs.ext4"), join(broken, "rootfs.ext4"));
      writeFileSync(join(broken, "initramfs.cpio.gz"), "not an initramfs");
      await d.create(spec);
      await expect(d.start(spec.id)).rejects.toMatchObject({ code: "FAILED_PRECONDITION", message: expect.stringMatching(/qemu process \d+ exited.*console:.*(panic|VFS)/s) });
      const seen = await d.inspect(spec.id);
      expect(seen?.state).toBe("failed");
      expect(seen?.reason).toMatch(/panic|VFS/);
      expect(record(spec.id).qemu && isAlive(record(spec.id).qemu!)).toBe(false);
    } finally {
      await d.destroy(spec.id);
      rmSync(broken, { recursive: true, force: true });
    }
    expect(await linkExists(tapName(spec.id))).toBe(false);
  }, 180_000);
});
