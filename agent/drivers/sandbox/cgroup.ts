// cgroup limits for sandbox VMs: cgroup v2 when a cgroup2 hierarchy under the root offers the
// cpu and memory controllers, otherwise the cgroup v1 cpu, memory (and pids) hierarchies.
// Hosts with neither (some containers) run VMs without limits, and capabilities() says why.
//
// Pure parts (mount parsing, choosing a layout, the files to write, the exec wrapper) are
// separate from the few functions that touch /sys/fs/cgroup.
import { accessSync, constants, mkdirSync, readFileSync, readdirSync, rmdirSync, statfsSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { NoidError } from "../../../common/errors.js";

const CGROUP2_SUPER_MAGIC = 0x63677270;

export type CgroupProbe = { ok: true } | { ok: false; reason: string };

/** Is `root` a cgroup2 mount with writable cpu and memory controllers? (The Firecracker jailer's v2 mode needs this.) */
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

// ---- pure: mounts and layouts ----

export interface CgroupMount {
  mountPoint: string;
  version: 1 | 2;
  /** v1: the controllers of this hierarchy (from the super options); v2: empty (read cgroup.controllers). */
  controllers: string[];
}

/** cgroup mounts from /proc/self/mountinfo text. */
export function parseCgroupMounts(mountinfo: string): CgroupMount[] {
  const out: CgroupMount[] = [];
  for (const line of mountinfo.split("\n")) {
    const [left, right] = line.split(" - ");
    if (!left || !right) continue;
    const mountPoint = left.split(" ")[4];
    const [fstype, , superOpts = ""] = right.split(" ");
    if (!mountPoint) continue;
    const unescaped = mountPoint.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (fstype === "cgroup2") out.push({ mountPoint: unescaped, version: 2, controllers: [] });
    else if (fstype === "cgroup") {
      const controllers = superOpts.split(",").filter((o) => ["cpu", "memory", "pids", "freezer", "cpuacct", "cpuset", "blkio", "devices"].includes(o));
      out.push({ mountPoint: unescaped, version: 1, controllers });
    }
  }
  return out;
}

/** Where a VM's limits go: one cgroup2 hierarchy, or one v1 hierarchy per controller. */
export type CgroupLayout =
  | { version: 2; root: string; pids: boolean }
  | { version: 1; cpu: string; memory: string; pids?: string };

export type LimitsProbe = { ok: true; layout: CgroupLayout } | { ok: false; reason: string };

const under = (root: string, p: string): boolean => p === root || p.startsWith(`${root.replace(/\/$/, "")}/`);

/**
 * Chooses the layout from the mounts under `root`: a cgroup2 mount whose `v2Controllers(mount)`
 * include cpu and memory wins; otherwise v1 hierarchies with cpu and memory (pids if mounted).
 */
export function chooseLayout(root: string, mounts: CgroupMount[], v2Controllers: (mountPoint: string) => string[] | string): LimitsProbe {
  const reasons: string[] = [];
  for (const m of mounts.filter((m) => m.version === 2 && under(root, m.mountPoint))) {
    const c = v2Controllers(m.mountPoint);
    if (typeof c === "string") {
      reasons.push(`${m.mountPoint}: ${c}`);
      continue;
    }
    const missing = ["cpu", "memory"].filter((x) => !c.includes(x));
    if (missing.length === 0) return { ok: true, layout: { version: 2, root: m.mountPoint, pids: c.includes("pids") } };
    reasons.push(`cgroup2 ${m.mountPoint} lacks controllers: ${missing.join(", ")}`);
  }
  const v1 = (c: string): string | undefined => mounts.find((m) => m.version === 1 && under(root, m.mountPoint) && m.controllers.includes(c))?.mountPoint;
  const [cpu, memory, pids] = [v1("cpu"), v1("memory"), v1("pids")];
  if (cpu && memory) return { ok: true, layout: { version: 1, cpu, memory, ...(pids ? { pids } : {}) } };
  if (!mounts.some((m) => m.version === 2 && under(root, m.mountPoint))) reasons.push(`no cgroup2 mount under ${root}`);
  reasons.push(`no cgroup v1 ${[cpu ? "" : "cpu", memory ? "" : "memory"].filter(Boolean).join(" or ")} hierarchy under ${root}`);
  return { ok: false, reason: reasons.join("; ") };
}

export interface VmLimits {
  vcpus: number;
  memoryMb: number;
  /** Most processes (and threads) the VM may have at once. */
  pidsMax: number;
}

export const CPU_PERIOD_US = 100_000;

/** The directories of one VM's cgroup(s) and the files to write, in order. */
export interface CgroupPlan {
  dirs: string[];
  writes: { path: string; value: string }[];
}

export function cgroupPlan(layout: CgroupLayout, parent: string, name: string, limits: VmLimits): CgroupPlan {
  const quota = Math.max(1, limits.vcpus) * CPU_PERIOD_US;
  const bytes = String(Math.max(1, limits.memoryMb) * 1024 * 1024);
  const pids = String(Math.max(1, limits.pidsMax));
  if (layout.version === 2) {
    const enable = `+cpu +memory${layout.pids ? " +pids" : ""}`;
    const dir = join(layout.root, parent, name);
    return {
      dirs: [dir],
      writes: [
        // Controllers must be enabled on every level above the leaf.
        { path: join(layout.root, "cgroup.subtree_control"), value: enable },
        { path: join(layout.root, parent, "cgroup.subtree_control"), value: enable },
        { path: join(dir, "cpu.max"), value: `${quota} ${CPU_PERIOD_US}` },
        { path: join(dir, "memory.max"), value: bytes },
        ...(layout.pids ? [{ path: join(dir, "pids.max"), value: pids }] : []),
      ],
    };
  }
  const cpu = join(layout.cpu, parent, name);
  const memory = join(layout.memory, parent, name);
  const pidsDir = layout.pids ? join(layout.pids, parent, name) : undefined;
  return {
    // cpu and memory may share one hierarchy (mounted together): one directory then.
    dirs: [...new Set([cpu, memory, ...(pidsDir ? [pidsDir] : [])])],
    writes: [
      { path: join(cpu, "cpu.cfs_period_us"), value: String(CPU_PERIOD_US) },
      { path: join(cpu, "cpu.cfs_quota_us"), value: String(quota) },
      { path: join(memory, "memory.limit_in_bytes"), value: bytes },
      ...(pidsDir ? [{ path: join(pidsDir, "pids.max"), value: pids }] : []),
    ],
  };
}

/** The variable that carries a caller's PWD past the wrapper's shell (which resets PWD). */
export const PWD_CARRIER = "NOID_EXEC_PWD";

/**
 * argv that joins the VM's cgroups before it execs `argv`: the commands a client runs in the
 * VM are bound by the VM's limits like its init. A join that fails ends with exit 125 and the
 * shell's message on stderr. The wrapper's shell sets PWD to its working directory: that is
 * removed again or, with `keepPwd`, replaced by the caller's PWD passed in the environment as
 * PWD_CARRIER (never in argv: environment values may be secrets).
 */
export function inCgroupArgv(dirs: readonly string[], argv: readonly string[], keepPwd = false): string[] {
  const pwd = keepPwd ? `PWD=$${PWD_CARRIER}; export PWD; unset ${PWD_CARRIER}` : "unset PWD";
  const script = `n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; ${pwd}; exec "$@"`;
  return ["/bin/sh", "-c", script, "sh", String(dirs.length), ...dirs.map((d) => join(d, "cgroup.procs")), ...argv];
}

// ---- I/O ----

/** Reads the mounts and the cgroup2 controllers, then chooses. */
export function probeLimits(root: string, mountinfo?: string): LimitsProbe {
  let text = mountinfo;
  try {
    text ??= readFileSync("/proc/self/mountinfo", "utf8");
  } catch (e) {
    return { ok: false, reason: `reading /proc/self/mountinfo: ${e instanceof Error ? e.message : String(e)}` };
  }
  const probe = chooseLayout(root, parseCgroupMounts(text), (mp) => {
    try {
      accessSync(join(mp, "cgroup.subtree_control"), constants.W_OK);
      return readFileSync(join(mp, "cgroup.controllers"), "utf8").split(/\s+/).filter(Boolean);
    } catch (e) {
      return e instanceof Error ? e.message : String(e);
    }
  });
  if (!probe.ok || probe.layout.version === 2) return probe;
  for (const dir of [probe.layout.cpu, probe.layout.memory, probe.layout.pids].filter((d): d is string => d !== undefined)) {
    try {
      accessSync(dir, constants.W_OK);
    } catch (e) {
      return { ok: false, reason: `cgroup v1 ${dir} is not writable: ${e instanceof Error ? e.message : String(e)}` };
    }
  }
  return probe;
}

export function describeLayout(l: CgroupLayout): string {
  return l.version === 2
    ? `cgroup v2 at ${l.root} (cpu.max, memory.max${l.pids ? ", pids.max" : ""})`
    : `cgroup v1 (cpu.cfs_quota_us at ${l.cpu}, memory.limit_in_bytes at ${l.memory}${l.pids ? `, pids.max at ${l.pids}` : ""})`;
}

/** Makes the directories and writes the limits; returns the leaf directories. */
export function applyCgroupPlan(plan: CgroupPlan): string[] {
  for (const d of plan.dirs) mkdirSync(d, { recursive: true });
  for (const w of plan.writes) {
    try {
      writeFileSync(w.path, w.value);
    } catch (e) {
      throw new NoidError("INTERNAL", `writing ${w.value} to ${w.path}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }
  return plan.dirs;
}

export function joinCgroups(dirs: readonly string[], pid: number): void {
  for (const d of dirs) writeFileSync(join(d, "cgroup.procs"), String(pid));
}

/** PIDs in the cgroups (empty for a cgroup that does not exist). */
export function cgroupPids(dirs: readonly string[]): number[] {
  const pids = new Set<number>();
  for (const d of dirs) {
    try {
      for (const l of readFileSync(join(d, "cgroup.procs"), "utf8").split("\n")) if (l.trim()) pids.add(Number(l));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
  }
  return [...pids];
}

/** SIGKILLs every process in the cgroups (a VM's exec'd commands too) and waits (bounded) until they are empty. */
export async function killCgroups(dirs: readonly string[], timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const pids = cgroupPids(dirs);
    if (pids.length === 0) return;
    if (Date.now() > deadline) throw new NoidError("INTERNAL", `processes ${pids.join(", ")} in ${dirs.join(", ")} survived SIGKILL`);
    for (const p of pids) {
      try {
        process.kill(p, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * rmdir works only once a cgroup has no processes; callers kill them first (killCgroups).
 * Each directory's parent (the agent's) goes too once it is empty; one that still has VMs stays.
 */
export async function removeCgroups(dirs: readonly string[]): Promise<void> {
  for (const d of dirs) {
    await removeDir(d);
    try {
      rmdirSync(dirname(d));
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== "ENOENT" && code !== "EBUSY" && code !== "ENOTEMPTY") throw e;
    }
  }
}

async function removeDir(d: string): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      rmdirSync(d);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT") return;
      // A process that just exited can keep the cgroup busy for a moment.
      if (code !== "EBUSY" || i >= 50) throw e;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

/** The parent cgroups of agents (`noid-<nsPrefix>`, one per hierarchy) whose nsPrefix `match`es: for lab teardown. */
export function agentCgroupDirs(match: (nsPrefix: string) => boolean, root = "/sys/fs/cgroup", mountinfo?: string): string[] {
  let text = mountinfo;
  try {
    text ??= readFileSync("/proc/self/mountinfo", "utf8");
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const m of parseCgroupMounts(text).filter((m) => under(root, m.mountPoint))) {
    try {
      for (const e of readdirSync(m.mountPoint, { withFileTypes: true })) {
        if (e.isDirectory() && e.name.startsWith("noid-") && match(e.name.slice(5))) out.push(join(m.mountPoint, e.name));
      }
    } catch {
      /* unreadable hierarchy: nothing of ours there */
    }
  }
  return out;
}

/** Kills what runs in an agent's parent cgroup and its VMs' cgroups, then removes them all. */
export async function removeCgroupTree(dir: string): Promise<void> {
  let children: string[] = [];
  try {
    children = readdirSync(dir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => join(dir, e.name));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  for (const c of children) await removeCgroupTree(c);
  await killCgroups([dir]);
  await removeDir(dir);
}
