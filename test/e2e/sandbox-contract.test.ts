// Privileged: the driver contract (test/contract/driver-contract.ts) against the sandbox driver,
// with real namespaces, veths and cgroups. This machine offers no cgroup2 controllers, so the
// limits are proven on the cgroup v1 fallback (the same checks read cgroup v2 files on a v2 host).
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, expect } from "vitest";
import { type ProcessRef, isAlive, run } from "../../common/run.js";
import { type CgroupLayout, cgroupPlan, probeLimits } from "../../agent/drivers/sandbox/cgroup.js";
import { cgroupName, hostPort, shortId, vmNetns } from "../../agent/drivers/sandbox/names.js";
import { SandboxDriver } from "../../agent/drivers/sandbox/sandbox.js";
import type { SandboxRecord } from "../../agent/drivers/sandbox/records.js";
import type { HypervisorDriver, VmCreateSpec } from "../../agent/drivers/driver.js";
import { registerDriverContract } from "../contract/driver-contract.js";

const tag = randomBytes(3).toString("hex");
const hostNs = `sc${tag}`; // the driver's "host" netns, and the prefix of its VM namespaces
const cgroupParent = `noid-test-${hostNs}`;
const pidsMax = 32;
const stateDir = mkdtempSync(join(tmpdir(), "noid-sandbox-contract-"));
let n = 0;

const probe = probeLimits("/sys/fs/cgroup");
const layout = (): CgroupLayout => {
  if (!probe.ok) throw new Error(`no cgroup limits on this machine: ${probe.reason}`);
  return probe.layout;
};
/** The VM's cgroup directories, from the names alone (as the driver derives them). */
const cgroupDirs = (id: string): string[] => cgroupPlan(layout(), cgroupParent, cgroupName(id), { vcpus: 1, memoryMb: 1, pidsMax }).dirs;
const controllerDir = (id: string, file: string): string => {
  const l = layout();
  const mount = l.version === 2 ? l.root : file.startsWith("cpu") ? l.cpu : file.startsWith("memory") ? l.memory : l.pids!;
  return join(mount, cgroupParent, cgroupName(id), file);
};
const readCg = (id: string, file: string): string => readFileSync(controllerDir(id, file), "utf8").trim();
const record = (id: string): SandboxRecord | undefined => {
  try {
    return JSON.parse(readFileSync(join(stateDir, "sandbox", `${shortId(id)}.json`), "utf8")) as SandboxRecord;
  } catch {
    return undefined;
  }
};
const seen = new Map<string, ProcessRef[]>();

beforeAll(async () => {
  await run(["ip", "netns", "add", hostNs]);
  await run(["ip", "-n", hostNs, "link", "add", "vmbr0", "type", "bridge"]);
  await run(["ip", "-n", hostNs, "link", "set", "vmbr0", "up"]);
});

afterAll(async () => {
  const d = new SandboxDriver({ stateDir, nsPrefix: hostNs, netns: hostNs, cgroupParent, pidsMax });
  for (const v of await d.list()) await d.destroy(v.id);
  await run(["ip", "netns", "del", hostNs], { allowFail: true });
  rmSync(stateDir, { recursive: true, force: true });
  // The agent's parent cgroup goes with its last VM.
  for (const d of cgroupDirs("x")) expect(existsSync(join(d, ".."))).toBe(false);
});

registerDriverContract("sandbox", () => ({
  driver: (): HypervisorDriver => new SandboxDriver({ stateDir, nsPrefix: hostNs, netns: hostNs, cgroupParent, pidsMax }),
  spec: (name: string): VmCreateSpec => {
    n++;
    return {
      id: `vm-${name}-${tag}`,
      vcpus: 1,
      memoryMb: 64,
      diskGb: 1,
      image: "",
      net: { mac: `02:00:00:5c:00:${n.toString(16).padStart(2, "0")}`, ip: `10.202.0.${10 + n}`, prefixLen: 24, bridge: "vmbr0" },
    };
  },
  hasImages: false,
  vmProcess: (id) => {
    const init = record(id)?.init;
    if (init) seen.set(id, [...(seen.get(id) ?? []), init]);
    return init;
  },
  leftovers: async (id) => {
    const left: string[] = [];
    if (existsSync(`/run/netns/${vmNetns(hostNs, id)}`)) left.push(`netns ${vmNetns(hostNs, id)}`);
    if ((await run(["ip", "-n", hostNs, "link", "show", "dev", hostPort(id)], { allowFail: true })).exitCode === 0) left.push(`link ${hostPort(id)}`);
    if (record(id)) left.push(`record of ${id}`);
    for (const d of cgroupDirs(id)) if (existsSync(d)) left.push(`cgroup ${d}`);
    for (const p of seen.get(id) ?? []) if (isAlive(p)) left.push(`process ${p.pid}`);
    return left;
  },
  vanish: async (id) => {
    await run(["ip", "netns", "del", vmNetns(hostNs, id)]);
  },
  realGuest: true,
  limits: {
    async verify(d, vm) {
      const l = layout();
      // The limits as written, read back from the kernel.
      if (l.version === 1) {
        expect(readCg(vm.id, "cpu.cfs_period_us")).toBe("100000");
        expect(readCg(vm.id, "cpu.cfs_quota_us")).toBe(String(vm.vcpus * 100_000));
        expect(readCg(vm.id, "memory.limit_in_bytes")).toBe(String(vm.memoryMb * 1024 * 1024));
      } else {
        expect(readCg(vm.id, "cpu.max")).toBe(`${vm.vcpus * 100_000} 100000`);
        expect(readCg(vm.id, "memory.max")).toBe(String(vm.memoryMb * 1024 * 1024));
      }
      if (l.version === 1 ? l.pids : l.pids) expect(readCg(vm.id, "pids.max")).toBe(String(pidsMax));

      // The VM's init and the commands run in it are in its cgroups.
      const init = record(vm.id)!.init!;
      for (const dir of cgroupDirs(vm.id)) expect(readFileSync(join(dir, "cgroup.procs"), "utf8").split("\n")).toContain(String(init.pid));
      const mine = (await d.exec!(vm.id, ["cat", "/proc/self/cgroup"])).stdout;
      expect(mine).toContain(`/${cgroupParent}/${cgroupName(vm.id)}`);
      if (l.version === 1) expect(mine).toMatch(new RegExp(`:(cpu|[a-z,]*,cpu|cpu,[a-z,]*):/${cgroupParent}/${cgroupName(vm.id)}\n`));

      // CPU: three busy loops in a 1-vCPU VM use at most one CPU: the kernel throttles them. On
      // a loaded machine (other tests, other VMs) they would not even get one CPU, so the test
      // first gives the VM's group the largest CPU weight (cpu.shares / cpu.weight): it then
      // wants three CPUs and only its quota holds it to one, which cpu.stat counts.
      // (Its parent, the agent's cgroup, competes with the rest of the machine: it gets the weight too.)
      const weightFile = l.version === 1 ? "cpu.shares" : "cpu.weight";
      const weighted = [controllerDir(vm.id, weightFile), join(controllerDir(vm.id, weightFile), "../..", weightFile)];
      const weights = weighted.map((f) => readFileSync(f, "utf8").trim());
      for (const f of weighted) writeFileSync(f, l.version === 1 ? "262144" : "10000");
      const throttled = (): number => Number(/nr_throttled (\d+)/.exec(readCg(vm.id, "cpu.stat"))?.[1] ?? "0");
      const before = throttled();
      try {
        for (let round = 0; round < 5 && throttled() === before; round++) {
          const burn = await d.exec!(vm.id, ["sh", "-c", 'for i in 1 2 3; do (while :; do :; done) & p="$p $!"; done; sleep 1; kill $p'], { timeoutMs: 30_000 });
          expect(burn.exitCode, burn.stderr).toBe(0);
        }
      } finally {
        weighted.forEach((f, i) => writeFileSync(f, weights[i]!));
      }
      expect(throttled()).toBeGreaterThan(before);

      // pids: the VM cannot have more than pidsMax processes; what it forked is gone afterwards.
      const forks = await d.exec!(vm.id, ["sh", "-c", `i=0; while [ $i -lt ${pidsMax * 2} ]; do sleep 1 & i=$((i+1)); done; wait`], { timeoutMs: 30_000 });
      expect(forks.exitCode).not.toBe(0);
      expect(forks.stderr).toMatch(/fork/i);
    },
    async afterOom(vm) {
      // The kernel's own count: the cgroup hit its limit and its OOM killer ran.
      if (layout().version === 1) {
        expect(Number(readCg(vm.id, "memory.failcnt"))).toBeGreaterThan(0);
        expect(readCg(vm.id, "memory.oom_control")).toMatch(/oom_kill [1-9]/);
      } else {
        expect(readCg(vm.id, "memory.events")).toMatch(/oom_kill [1-9]/);
      }
    },
  },
  timeoutMs: 90_000,
}));
