// The sandbox driver's cgroup choices, as pure functions: which hierarchy (v2, or the v1
// fallback), which files get which values, and the exec wrapper that joins a VM's cgroups.
// The kernel side is proven by the driver contract (test/e2e/sandbox-contract.test.ts).
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { run } from "../../common/run.js";
import { PWD_CARRIER, agentCgroupDirs, cgroupPlan, chooseLayout, inCgroupArgv, parseCgroupMounts, removeCgroupTree } from "../../agent/drivers/sandbox/cgroup.js";

// This development machine: cgroup v1 controllers, and a cgroup2 mount with none of them.
const hybrid = `31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
// A systemd v2-only host.
const unified = `25 21 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
26 21 0:23 / /proc rw - proc proc rw
`;
// Debian's older layout: cpu and cpuacct in one hierarchy.
const comounted = `32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
`;

describe("choosing the cgroup layout", () => {
  it("parses cgroup v1 and v2 mounts with their controllers", () => {
    const m = parseCgroupMounts(hybrid);
    expect(m.find((x) => x.mountPoint === "/sys/fs/cgroup/cpu")).toEqual({ mountPoint: "/sys/fs/cgroup/cpu", version: 1, controllers: ["cpu"] });
    expect(m.find((x) => x.mountPoint === "/sys/fs/cgroup/unified")).toEqual({ mountPoint: "/sys/fs/cgroup/unified", version: 2, controllers: [] });
    expect(m.find((x) => x.mountPoint === "/sys/fs/cgroup/systemd")?.controllers).toEqual([]);
    expect(m.some((x) => x.mountPoint === "/sys/fs/cgroup")).toBe(false); // the tmpfs
    expect(parseCgroupMounts(comounted)[0]?.controllers).toEqual(["cpu", "cpuacct"]);
  });

  it("uses cgroup v2 when a cgroup2 mount under the root has cpu and memory", () => {
    const p = chooseLayout("/sys/fs/cgroup", parseCgroupMounts(unified), () => ["cpuset", "cpu", "io", "memory", "pids"]);
    expect(p).toEqual({ ok: true, layout: { version: 2, root: "/sys/fs/cgroup", pids: true } });
    // With cgroup2 controllers on a hybrid host's unified mount, v2 wins over v1 too.
    expect(chooseLayout("/sys/fs/cgroup", parseCgroupMounts(hybrid), () => ["cpu", "memory"])).toEqual({
      ok: true,
      layout: { version: 2, root: "/sys/fs/cgroup/unified", pids: false },
    });
  });

  it("falls back to the v1 cpu, memory and pids hierarchies when cgroup2 lacks the controllers", () => {
    expect(chooseLayout("/sys/fs/cgroup", parseCgroupMounts(hybrid), () => [])).toEqual({
      ok: true,
      layout: { version: 1, cpu: "/sys/fs/cgroup/cpu", memory: "/sys/fs/cgroup/memory", pids: "/sys/fs/cgroup/pids" },
    });
    expect(chooseLayout("/sys/fs/cgroup", parseCgroupMounts(comounted), () => [])).toEqual({
      ok: true,
      layout: { version: 1, cpu: "/sys/fs/cgroup/cpu,cpuacct", memory: "/sys/fs/cgroup/memory" },
    });
  });

  it("says why there are no limits when neither works", () => {
    const none = chooseLayout("/sys/fs/cgroup", parseCgroupMounts(unified), () => ["pids"]);
    expect(none).toEqual({ ok: false, reason: expect.stringMatching(/cgroup2 \/sys\/fs\/cgroup lacks controllers: cpu, memory.*no cgroup v1 cpu or memory hierarchy/) });
    const ro = chooseLayout("/sys/fs/cgroup", parseCgroupMounts(unified), () => "EACCES: permission denied");
    expect(ro.ok).toBe(false);
    expect(!ro.ok && ro.reason).toContain("/sys/fs/cgroup: EACCES");
    // Mounts outside the configured root are not used.
    expect(chooseLayout("/elsewhere", parseCgroupMounts(hybrid), () => ["cpu", "memory"])).toMatchObject({ ok: false });
  });
});

describe("a VM's cgroup files", () => {
  const limits = { vcpus: 2, memoryMb: 256, pidsMax: 512 };

  it("v2: cpu.max, memory.max, pids.max under <root>/<parent>/<vm>, controllers enabled above it", () => {
    expect(cgroupPlan({ version: 2, root: "/cg", pids: true }, "noid-h1", "vm-abc", limits)).toEqual({
      dirs: ["/cg/noid-h1/vm-abc"],
      writes: [
        { path: "/cg/cgroup.subtree_control", value: "+cpu +memory +pids" },
        { path: "/cg/noid-h1/cgroup.subtree_control", value: "+cpu +memory +pids" },
        { path: "/cg/noid-h1/vm-abc/cpu.max", value: "200000 100000" },
        { path: "/cg/noid-h1/vm-abc/memory.max", value: String(256 * 1024 * 1024) },
        { path: "/cg/noid-h1/vm-abc/pids.max", value: "512" },
      ],
    });
  });

  it("v1: cfs quota and period, memory.limit_in_bytes and pids.max, one directory per hierarchy", () => {
    const plan = cgroupPlan({ version: 1, cpu: "/cg/cpu", memory: "/cg/memory", pids: "/cg/pids" }, "noid-h1", "vm-abc", limits);
    expect(plan.dirs).toEqual(["/cg/cpu/noid-h1/vm-abc", "/cg/memory/noid-h1/vm-abc", "/cg/pids/noid-h1/vm-abc"]);
    expect(plan.writes).toEqual([
      { path: "/cg/cpu/noid-h1/vm-abc/cpu.cfs_period_us", value: "100000" },
      { path: "/cg/cpu/noid-h1/vm-abc/cpu.cfs_quota_us", value: "200000" },
      { path: "/cg/memory/noid-h1/vm-abc/memory.limit_in_bytes", value: String(256 * 1024 * 1024) },
      { path: "/cg/pids/noid-h1/vm-abc/pids.max", value: "512" },
    ]);
    // No pids hierarchy: no pids limit. cpu and memory mounted together: one directory.
    const together = cgroupPlan({ version: 1, cpu: "/cg/x", memory: "/cg/x" }, "p", "v", limits);
    expect(together.dirs).toEqual(["/cg/x/p/v"]);
    expect(together.writes.map((w) => w.path)).not.toContain("/cg/x/p/v/pids.max");
  });
});

describe("the exec wrapper", () => {
  it("writes its PID to each cgroup.procs and execs the command in place, argv and env untouched", async () => {
    const dirs = [mkdtempSync(join(tmpdir(), "noid-cg-")), mkdtempSync(join(tmpdir(), "noid-cg-"))];
    try {
      for (const d of dirs) writeFileSync(join(d, "cgroup.procs"), "");
      // $$ of the command is the PID the wrapper wrote: the command replaced the wrapper.
      const r = await run(inCgroupArgv(dirs, ["sh", "-c", 'echo $$; printf "%s|" "$@"', "x", "a b", "$HOME"]));
      const [pid, args] = r.stdout.split("\n");
      for (const d of dirs) expect(readFileSync(join(d, "cgroup.procs"), "utf8").trim()).toBe(pid);
      expect(args).toBe("a b|$HOME|");
      // The wrapper's shell adds nothing (no PWD) to the command's environment.
      const env = await run(inCgroupArgv(dirs, ["env"]), { cleanEnv: true, env: { ONLY: "this" } });
      expect(env.stdout.split("\n").sort()).toEqual(["LC_ALL=C", "ONLY=this", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]);
      // A PWD the caller set is kept.
      const kept = await run(inCgroupArgv(dirs, ["env"], true), { cleanEnv: true, env: { PWD: "/", [PWD_CARRIER]: "/" } });
      expect(kept.stdout.split("\n").sort()).toEqual(["LC_ALL=C", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "PWD=/"]);
      // A join that fails: exit 125 and the shell's message, the command never runs.
      const failed = await run(inCgroupArgv(["/nonexistent-cgroup"], ["echo", "ran"]), { allowFail: true, cleanEnv: true });
      expect(failed.exitCode).toBe(125);
      expect(failed.stdout).toBe("");
      expect(failed.stderr).toContain("/nonexistent-cgroup/cgroup.procs");
    } finally {
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
    }
  });
});

describe("lab teardown of agents' cgroups", () => {
  it("finds the parent cgroups of the matching agents in every hierarchy, and removes them with their VMs' cgroups", async () => {
    const root = mkdtempSync(join(tmpdir(), "noid-cgroot-"));
    try {
      for (const d of ["cpu/noid-lab1-h1/vm-a", "memory/noid-lab1-h1/vm-a", "memory/noid-lab1-h2", "cpu/noid-other-h1/vm-b", "cpu/unrelated"]) mkdirSync(join(root, d), { recursive: true });
      const mountinfo = [`32 31 0:29 / ${root}/cpu rw - cgroup cgroup rw,cpu`, `35 31 0:32 / ${root}/memory rw - cgroup cgroup rw,memory`].join("\n");
      const mine = agentCgroupDirs((p) => p.startsWith("lab1-"), root, mountinfo);
      expect(mine.sort()).toEqual([join(root, "cpu/noid-lab1-h1"), join(root, "memory/noid-lab1-h1"), join(root, "memory/noid-lab1-h2")]);
      for (const d of mine) await removeCgroupTree(d);
      expect(agentCgroupDirs((p) => p.startsWith("lab1-"), root, mountinfo)).toEqual([]);
      expect(existsSync(join(root, "cpu/noid-other-h1/vm-b"))).toBe(true);
      expect(existsSync(join(root, "cpu/unrelated"))).toBe(true);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
