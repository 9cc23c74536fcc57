// The driver contract (test/contract/driver-contract.ts) against the Firecracker driver, with
// the fake Firecracker API and jailer of test/helpers/fake-firecracker.ts. Everything around
// Firecracker is real (root: netns, TAP, veth, bridge, files, processes).
//
// What a fake can prove here: the lifecycle the agent sees (create/inspect/list, start, stop,
// destroy leaving nothing, recover by a new driver object, a dead process reported failed, a
// vanished disk dropped), bad input (missing kernel/image), and exec's transport (exit status,
// env, timeout over the vsock handshake). What it cannot: real commands in a guest (stderr,
// 127) and resource limits (the jailer's cgroups; this machine has no cgroup2 controllers and
// no jailer); those cases are not run, and the suite name lists them.
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll } from "vitest";
import { type ProcessRef, isAlive, run } from "../../common/run.js";
import type { VmCreateSpec } from "../../agent/drivers/driver.js";
import { FirecrackerDriver, type FirecrackerOptions } from "../../agent/drivers/firecracker/driver.js";
import { jailIdFor } from "../../agent/drivers/firecracker/jailer.js";
import { hostPortName, vmNetnsName } from "../../agent/drivers/firecracker/netns.js";
import type { FirecrackerRecord } from "../../agent/drivers/firecracker/records.js";
import { shortId } from "../../agent/drivers/sandbox/names.js";
import { type FakeJailerSpawner, fakeJailerSpawner } from "../helpers/fake-firecracker.js";
import { registerDriverContract } from "../contract/driver-contract.js";

const tag = randomBytes(3).toString("hex");
const nsPrefix = `fk${tag}`;
const hostNs = `${nsPrefix}-host`;
const dir = mkdtempSync(`/tmp/nfk${tag}-`);
let spawner: FakeJailerSpawner;
let opts: FirecrackerOptions;
let n = 0;
const seen = new Map<string, ProcessRef[]>();

const record = (id: string): FirecrackerRecord | undefined => {
  try {
    return JSON.parse(readFileSync(join(dir, "state", "firecracker", "records", `${shortId(id)}.json`), "utf8")) as FirecrackerRecord;
  } catch {
    return undefined;
  }
};

beforeAll(async () => {
  writeFileSync(join(dir, "vmlinux"), "not really a kernel");
  writeFileSync(join(dir, "base.ext4"), Buffer.alloc(1024 * 1024));
  for (const bin of ["firecracker", "jailer"]) {
    writeFileSync(join(dir, bin), "#!/bin/sh\nexit 1\n");
    chmodSync(join(dir, bin), 0o755);
  }
  await run(["ip", "netns", "add", hostNs]);
  await run(["ip", "-n", hostNs, "link", "add", "vmbr0", "type", "bridge"]);
  spawner = fakeJailerSpawner();
  opts = {
    stateDir: join(dir, "state"),
    nsPrefix,
    netns: hostNs,
    firecrackerBin: join(dir, "firecracker"),
    jailerBin: join(dir, "jailer"),
    kernel: join(dir, "vmlinux"),
    imageDir: dir,
    chrootBase: join(dir, "jail"),
    uid: process.getuid?.() ?? 0,
    gid: process.getgid?.() ?? 0,
    cgroupParent: `noid-test-${nsPrefix}`,
    stopTimeoutMs: 5000,
    spawner,
  };
});

afterAll(async () => {
  const d = new FirecrackerDriver(opts);
  for (const v of await d.list()) await d.destroy(v.id);
  await spawner?.closeAll();
  await run(["ip", "netns", "del", hostNs], { allowFail: true });
  rmSync(dir, { recursive: true, force: true });
});

registerDriverContract("firecracker (fake API)", () => ({
  driver: () => new FirecrackerDriver(opts),
  withoutKernel: () => new FirecrackerDriver({ ...opts, kernel: join(dir, "no-vmlinux") }),
  hasImages: true,
  spec: (name: string): VmCreateSpec => {
    n++;
    return {
      id: `vm-${name}-${tag}`,
      vcpus: 2,
      memoryMb: 256,
      diskGb: 1,
      image: "base",
      net: { mac: `02:00:00:fc:00:${n.toString(16).padStart(2, "0")}`, ip: `10.203.0.${10 + n}`, prefixLen: 24, bridge: "vmbr0" },
    };
  },
  vmProcess: (id) => {
    const p = record(id)?.process;
    if (p) seen.set(id, [...(seen.get(id) ?? []), p]);
    return p;
  },
  leftovers: async (id) => {
    const left: string[] = [];
    const ns = vmNetnsName(nsPrefix, id);
    if (existsSync(`/run/netns/${ns}`)) left.push(`netns ${ns}`);
    if ((await run(["ip", "-n", hostNs, "link", "show", "dev", hostPortName(id)], { allowFail: true })).exitCode === 0) left.push(`link ${hostPortName(id)}`);
    const jail = join(dir, "jail", "firecracker", jailIdFor(nsPrefix, id));
    if (existsSync(jail)) left.push(`jail ${jail}`);
    const vmDir = join(dir, "state", "firecracker", "vms", shortId(id));
    if (existsSync(vmDir)) left.push(`dir ${vmDir}`);
    if (record(id)) left.push(`record of ${id}`);
    for (const p of seen.get(id) ?? []) if (isAlive(p)) left.push(`process ${p.pid}`);
    return left;
  },
  vanish: async (id) => {
    rmSync(record(id)!.layout.rootfs.host);
  },
  realGuest: false,
  limitsNote: "Firecracker's limits are the jailer's cgroup v2 files: no cgroup2 controllers and no jailer on this machine",
  timeoutMs: 60_000,
}));
