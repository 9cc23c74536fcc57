// The one command runner: every `ip`, `wg`, `nft`, `bridge`, ... call goes through here.
// argv arrays only (never a shell string), so names coming from the API cannot inject commands.
// Code that runs commands receives a `Runner` in its options, so tests can record or fake it.
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { execa } from "execa";
import { NoidError } from "./errors.js";

export interface RunOptions {
  /** Run inside this named network namespace (/run/netns/NAME). */
  netns?: string;
  /** Also enter this mount namespace (a path to a pinned mount ns file). */
  mountNs?: string;
  /** Kill the command after this long (default 30 s). */
  timeoutMs?: number;
  /** Written to the command's stdin. */
  input?: string;
  /** Return a non-zero exit (or a timeout, with timedOut set) instead of throwing. */
  allowFail?: boolean;
  /** Extra environment variables for the command (never put secrets in argv). */
  env?: Record<string, string>;
  /** Do not inherit this process's environment (commands run for tenants get only `env` and a PATH). */
  cleanEnv?: boolean;
}

export interface RunResult {
  stdout: string;
  stderr: string;
  /** -1 when the command could not be spawned or was killed (timeout, signal). */
  exitCode: number;
  /** Set (with allowFail) when the command was killed at its timeout. */
  timedOut?: boolean;
}

export type Runner = (argv: readonly string[], opts?: RunOptions) => Promise<RunResult>;

const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * The argv that actually runs: namespaces are entered with nsenter, which (unlike
 * `ip netns exec`) leaves the mount namespace alone unless asked, so /run/netns
 * entries created by the command stay visible to everyone else.
 */
export function wrapArgv(argv: readonly string[], opts: Pick<RunOptions, "netns" | "mountNs"> = {}): string[] {
  if (argv.length === 0) throw new NoidError("INTERNAL", "run: empty argv");
  if (opts.netns === undefined && opts.mountNs === undefined) return [...argv];
  const ns: string[] = [];
  if (opts.netns !== undefined) ns.push(`--net=/run/netns/${opts.netns}`);
  if (opts.mountNs !== undefined) ns.push(`--mount=${opts.mountNs}`);
  return ["nsenter", ...ns, "--", ...argv];
}

/** Quoted for humans reading an error message; never executed. */
export function describeArgv(argv: readonly string[]): string {
  return argv.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : JSON.stringify(a))).join(" ");
}

export const run: Runner = async (argv, opts = {}) => {
  const full = wrapArgv(argv, opts);
  const [file, ...args] = full as [string, ...string[]];
  const r = await execa(file, args, {
    reject: false,
    timeout: opts.timeoutMs ?? DEFAULT_TIMEOUT_MS,
    ...(opts.input !== undefined ? { input: opts.input } : { stdin: "ignore" as const }),
    stripFinalNewline: true,
    env: { LC_ALL: "C", ...(opts.cleanEnv ? { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" } : {}), ...opts.env },
    extendEnv: !opts.cleanEnv,
  });
  const stdout = typeof r.stdout === "string" ? r.stdout : "";
  const stderr = typeof r.stderr === "string" ? r.stderr : "";
  const exitCode = typeof r.exitCode === "number" ? r.exitCode : -1;
  const spawnFailed = r.failed && r.exitCode === undefined && !r.timedOut;
  if (r.timedOut && opts.allowFail) return { stdout, stderr, exitCode: -1, timedOut: true };
  if (spawnFailed || r.timedOut || (exitCode !== 0 && !opts.allowFail)) {
    const why = r.timedOut
      ? `timed out after ${opts.timeoutMs ?? DEFAULT_TIMEOUT_MS} ms`
      : spawnFailed
        ? (r.signal ? `killed by ${r.signal}` : `could not run: ${r.originalMessage ?? r.shortMessage}`)
        : `exit code ${exitCode}`;
    throw new NoidError("INTERNAL", `${describeArgv(full)}: ${why}${stderr ? `: ${stderr.trim()}` : ""}`, spawnFailed ? { cause: r } : {});
  }
  return { stdout, stderr, exitCode };
};

/** A runner that records every call and answers from `respond` (default: success, empty output). */
export function recordingRunner(
  respond: (argv: readonly string[], opts: RunOptions) => Partial<RunResult> | undefined = () => undefined,
): Runner & { calls: { argv: string[]; opts: RunOptions }[] } {
  const calls: { argv: string[]; opts: RunOptions }[] = [];
  const fn = async (argv: readonly string[], opts: RunOptions = {}): Promise<RunResult> => {
    calls.push({ argv: [...argv], opts });
    const r = { stdout: "", stderr: "", exitCode: 0, ...respond(argv, opts) };
    if (r.exitCode !== 0 && !opts.allowFail) {
      throw new NoidError("INTERNAL", `${describeArgv(argv)}: exit code ${r.exitCode}: ${r.stderr}`);
    }
    return r;
  };
  return Object.assign(fn, { calls });
}

export interface SpawnOptions extends Pick<RunOptions, "netns" | "mountNs"> {
  /** stdout and stderr are appended here; default: discarded. */
  logFile?: string;
}

/**
 * Starts a long-running process that outlives its parent (VM init, lab daemons) and
 * returns its PID. nsenter execs the target, so the PID is the target's own; callers
 * record it (with its start time) to find and kill exactly that process later.
 */
export type Spawner = (argv: readonly string[], opts?: SpawnOptions) => Promise<number>;

export const spawnDetached: Spawner = async (argv, opts = {}) => {
  const full = wrapArgv(argv, opts);
  const [file, ...args] = full as [string, ...string[]];
  const fd = opts.logFile !== undefined ? openSync(opts.logFile, "a") : undefined;
  try {
    const child = spawn(file, args, {
      detached: true,
      stdio: ["ignore", fd ?? "ignore", fd ?? "ignore"],
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once("error", (e) => reject(new NoidError("INTERNAL", `spawning ${describeArgv(full)}: ${e.message}`, { cause: e })));
      child.once("spawn", () => resolve(child.pid ?? -1));
    });
    // Reap it if it dies while we live (no zombies), but do not keep the event loop alive.
    child.on("exit", () => undefined);
    child.unref();
    return pid;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
};

/** A process we started, identified by PID and kernel start time so a reused PID is never mistaken for it. */
export interface ProcessRef {
  pid: number;
  /** Field 22 of /proc/PID/stat (clock ticks after boot). */
  startTime: number;
}

function readStat(pid: number): { state: string; startTime: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // comm (field 2) may contain spaces and parentheses: parse after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // rest[0] is field 3 (state), so field 22 is rest[19].
    return { state: rest[0] ?? "?", startTime: Number(rest[19]) };
  } catch {
    return undefined;
  }
}

export function processRef(pid: number): ProcessRef | undefined {
  const s = readStat(pid);
  return s === undefined ? undefined : { pid, startTime: s.startTime };
}

/** True while the very process `ref` names exists and is not a zombie. */
export function isAlive(ref: ProcessRef): boolean {
  const s = readStat(ref.pid);
  return s !== undefined && s.startTime === ref.startTime && s.state !== "Z" && s.state !== "X";
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves once the process is gone. Never signals a reused PID. */
export async function killProcess(ref: ProcessRef, graceMs = 2000): Promise<void> {
  const signal = (sig: NodeJS.Signals): void => {
    if (!isAlive(ref)) return;
    try {
      process.kill(ref.pid, sig);
    } catch {
      /* already gone */
    }
  };
  signal("SIGTERM");
  const deadline = Date.now() + graceMs;
  while (isAlive(ref) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  signal("SIGKILL");
  for (let i = 0; i < 250 && isAlive(ref); i++) await new Promise((r) => setTimeout(r, 20));
  if (isAlive(ref)) throw new NoidError("INTERNAL", `process ${ref.pid} survived SIGKILL`);
}
