// Pausing a sandbox VM with the cgroup freezer. A sandbox VM's processes are the ones in its
// network namespace (init and whatever exec started there); pause moves each of them into
// the VM's freezer cgroup and freezes it, resume thaws it.
//
// Why the freezer and not SIGSTOP/SIGCONT of the processes: frozen tasks cannot tell (no
// SIGCHLD/WUNTRACED to their parents, a process the tenant stopped itself stays stopped after
// resume, a signal sent while frozen is delivered after), a frozen task's new children are
// frozen with it, and the state lives in the kernel: a restarted agent reads it back, so
// recover() sees the VM paused and leaves it so.
//
// cgroup v2 (`cgroup.freeze`) when the driver gave the VM a v2 cgroup (limits); otherwise the
// v1 freezer hierarchy (/sys/fs/cgroup/freezer here), one cgroup per VM.
import { accessSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export type FreezerProbe = { ok: true } | { ok: false; reason: string };

/** A v1 freezer hierarchy is mounted at `root` and writable. */
export function probeFreezerV1(root: string): FreezerProbe {
  try {
    accessSync(join(root, "cgroup.procs"), constants.W_OK);
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `no writable cgroup v1 freezer at ${root}: ${e instanceof Error ? e.message : String(e)}` };
  }
}

export type Freezer = { kind: "v1"; dir: string } | { kind: "v2"; dir: string };

/** The pure reading of a freezer's state file(s). */
export function parseFrozen(kind: Freezer["kind"], text: string): boolean {
  if (kind === "v1") return text.trim() === "FROZEN";
  return /^frozen 1$/m.test(text);
}

export function isFrozen(f: Freezer): boolean {
  try {
    return parseFrozen(f.kind, readFileSync(join(f.dir, f.kind === "v1" ? "freezer.state" : "cgroup.events"), "utf8"));
  } catch {
    return false;
  }
}

export function ensureV1Freezer(root: string, parent: string, name: string): Freezer {
  const dir = join(root, parent, name);
  mkdirSync(dir, { recursive: true });
  return { kind: "v1", dir };
}

/** PIDs whose network namespace is `netnsFile` (/run/netns/<name>). */
export function pidsInNetns(netnsFile: string): number[] {
  let target: { ino: number; dev: number };
  try {
    const s = statSync(netnsFile);
    target = { ino: s.ino, dev: s.dev };
  } catch {
    return [];
  }
  const out: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const s = statSync(`/proc/${e}/ns/net`);
      if (s.ino === target.ino && s.dev === target.dev) out.push(Number(e));
    } catch {
      /* gone, or a kernel thread */
    }
  }
  return out;
}

function adopt(f: Freezer, pids: number[]): void {
  for (const pid of pids) {
    try {
      writeFileSync(join(f.dir, "cgroup.procs"), String(pid));
    } catch (e) {
      // A process that exited in between is fine.
      if ((e as NodeJS.ErrnoException).code !== "ESRCH") throw e;
    }
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * Moves every process of the netns into the freezer and freezes it; a process that appears
 * meanwhile is moved in after (joining a frozen cgroup freezes it). Waits (bounded) until
 * the kernel reports it frozen.
 */
export async function freeze(f: Freezer, netnsFile: string, timeoutMs = 5_000): Promise<void> {
  adopt(f, pidsInNetns(netnsFile));
  writeFileSync(join(f.dir, f.kind === "v1" ? "freezer.state" : "cgroup.freeze"), f.kind === "v1" ? "FROZEN" : "1");
  adopt(f, pidsInNetns(netnsFile));
  const end = Date.now() + timeoutMs;
  while (!isFrozen(f)) {
    if (Date.now() > end) throw new Error(`freezing ${f.dir}: the kernel did not report it frozen within ${timeoutMs} ms`);
    await sleep(10);
  }
}

export function thaw(f: Freezer): void {
  if (!existsSync(f.dir)) return;
  writeFileSync(join(f.dir, f.kind === "v1" ? "freezer.state" : "cgroup.freeze"), f.kind === "v1" ? "THAWED" : "0");
}

/** Thaws and removes a v1 freezer cgroup (its processes must be gone, or moved out by the kernel when they exit). */
export function removeV1Freezer(f: Freezer): void {
  if (f.kind !== "v1") return;
  try {
    thaw(f);
    rmdirSync(f.dir);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "ENOENT" && code !== "EBUSY") throw e;
  }
  // The per-agent parent goes with its last VM.
  try {
    rmdirSync(join(f.dir, ".."));
  } catch {
    /* other VMs still in it */
  }
}
