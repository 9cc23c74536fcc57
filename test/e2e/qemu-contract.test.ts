// Privileged: the driver contract (test/contract/driver-contract.ts) against the QEMU driver,
// booting the project's own guest (deploy/guest/build.sh) under TCG when KVM does not work
// here. Limits are QEMU's own -smp / -m, verified from inside the guest.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, expect } from "vitest";
import { type ProcessRef, isAlive, run } from "../../common/run.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { QemuDriver } from "../../agent/drivers/qemu/driver.js";
import { TcgTolerantQemu } from "../helpers/tcg-qemu.js";
import { tapName, vmPaths } from "../../agent/drivers/qemu/names.js";
import type { QemuRecord } from "../../agent/drivers/qemu/records.js";
import { shortId } from "../../agent/drivers/sandbox/names.js";
import { registerDriverContract } from "../contract/driver-contract.js";

const repo = resolve(import.meta.dirname, "../..");
const guestDir = join(repo, ".noid/guest");
const tag = randomBytes(3).toString("hex");
const netns = `qc-${tag}`;
// Short: QEMU's unix sockets live under it and sun_path is 108 bytes.
const stateDir = mkdtempSync(`/tmp/qc-${tag}-`);
const empty = mkdtempSync(`/tmp/qc-${tag}-empty-`);
let n = 0;
const seen = new Map<string, ProcessRef[]>();

const record = (id: string): QemuRecord | undefined => {
  try {
    return JSON.parse(readFileSync(join(stateDir, "qemu", "records", `${shortId(id)}.json`), "utf8")) as QemuRecord;
  } catch {
    return undefined;
  }
};
const driver = (): QemuDriver => new TcgTolerantQemu({ stateDir, guestDir, netns, accel: "auto", bootTimeoutMs: 120_000 });

beforeAll(async () => {
  await run(["bash", join(repo, "deploy/guest/build.sh")], { timeoutMs: 300_000 });
  await run(["ip", "netns", "add", netns]);
  await run(["ip", "-n", netns, "link", "add", "br0", "type", "bridge"]);
  await run(["ip", "-n", netns, "link", "set", "br0", "up"]);
}, 320_000);

afterAll(async () => {
  const d = driver();
  for (const v of await d.list()) await d.destroy(v.id);
  await run(["ip", "netns", "del", netns], { allowFail: true });
  rmSync(stateDir, { recursive: true, force: true });
  rmSync(empty, { recursive: true, force: true });
});

registerDriverContract("qemu", () => ({
  driver,
  withoutKernel: () => new QemuDriver({ stateDir: join(empty, "state"), guestDir: empty, netns }),
  hasImages: true,
  spec: (name: string): VmCreateSpec => {
    n++;
    return {
      id: `vm-${name}-${tag}`,
      vcpus: 2,
      memoryMb: 192,
      diskGb: 1,
      image: "",
      net: { mac: `02:00:00:5d:00:${n.toString(16).padStart(2, "0")}`, ip: `10.204.0.${10 + n}`, prefixLen: 24, bridge: "br0" },
    };
  },
  vmProcess: (id) => {
    const p = record(id)?.qemu;
    if (p) seen.set(id, [...(seen.get(id) ?? []), p]);
    return p;
  },
  leftovers: async (id) => {
    const left: string[] = [];
    if ((await run(["ip", "-n", netns, "link", "show", "dev", tapName(id)], { allowFail: true })).exitCode === 0) left.push(`tap ${tapName(id)}`);
    const dir = vmPaths(join(stateDir, "qemu", "vms"), id).dir;
    if (existsSync(dir)) left.push(`dir ${dir}`);
    if (record(id)) left.push(`record of ${id}`);
    for (const p of seen.get(id) ?? []) if (isAlive(p)) left.push(`process ${p.pid}`);
    return left;
  },
  vanish: async (id) => {
    rmSync(record(id)!.paths.overlay);
  },
  realGuest: true,
  limits: {
    async verify(d, vm) {
      // -smp and -m: the guest sees exactly that many vCPUs, and no more memory than given.
      const cpus = await d.exec!(vm.id, ["sh", "-c", "grep -c ^processor /proc/cpuinfo"]);
      expect(cpus.stdout.trim()).toBe(String(vm.vcpus));
      const mem = await d.exec!(vm.id, ["sh", "-c", "grep MemTotal /proc/meminfo"]);
      const memKb = Number(/(\d+)/.exec(mem.stdout)?.[1]);
      expect(memKb).toBeLessThanOrEqual(vm.memoryMb * 1024);
      expect(memKb).toBeGreaterThan(vm.memoryMb * 1024 * 0.6); // the kernel keeps some for itself
      const argv = readFileSync(`/proc/${record(vm.id)!.qemu!.pid}/cmdline`, "utf8").split("\0");
      expect(argv[argv.indexOf("-smp") + 1]).toBe(String(vm.vcpus));
      expect(argv[argv.indexOf("-m") + 1]).toMatch(new RegExp(`^${vm.memoryMb}M?$`));
    },
  },
  timeoutMs: 240_000, // TCG boots on a loaded machine
}));
