// cgroup v2 limits for sandbox VMs. Many machines (containers, hybrid v1/v2 hosts) do not
// offer a writable cgroup2 hierarchy with the cpu and memory controllers; the driver then
// runs without limits and says so in capabilities() instead of failing.
import { accessSync, constants, mkdirSync, readFileSync, rmdirSync, statfsSync, writeFileSync } from "node:fs";
import { join } from "node:path";

const CGROUP2_SUPER_MAGIC = 0x63677270;

export type CgroupProbe = { ok: true } | { ok: false; reason: string };

export function probeCgroup(root: string): CgroupProbe {
  try {
    if (statfsSync(root).type !== CGROUP2_SUPER_MAGIC) return { ok: false, reason: `${root} is not a cgroup2 mount` };
    const controllers = readFileSync(join(root, "cgroup.controllers"), "utf8").split(/\s+/);
    const missing = ["cpu", "memory"].filter((c) => !controllers.includes(c));
    if (missing.length) return { ok: false, reason: `${root} lacks controllers: ${missing.join(", ")}` };
    accessSync(join(root, "cgroup.subtree_control"), constants.W_OK);
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `${root}: ${e instanceof Error ? e.message : String(e)}` };
  }
}

/** Creates <root>/<parent>/<name> with cpu.max and memory.max; returns its path. */
export function createVmCgroup(root: string, parent: string, name: string, limits: { cpuMax: string; memoryMax: string }): string {
  const parentDir = join(root, parent);
  mkdirSync(parentDir, { recursive: true });
  // Controllers must be enabled on every level above the leaf.
  writeFileSync(join(root, "cgroup.subtree_control"), "+cpu +memory");
  writeFileSync(join(parentDir, "cgroup.subtree_control"), "+cpu +memory");
  const dir = join(parentDir, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "cpu.max"), limits.cpuMax);
  writeFileSync(join(dir, "memory.max"), limits.memoryMax);
  return dir;
}

export function joinCgroup(dir: string, pid: number): void {
  writeFileSync(join(dir, "cgroup.procs"), String(pid));
}

/** rmdir works only once the cgroup has no processes; callers kill them first. */
export function removeCgroup(dir: string): void {
  try {
    rmdirSync(dir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
  }
}
