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

/** A child process with its output streamed, for commands run on behalf of a client (exec). */
export interface AttachedProcess {
  onStdout(f: (b: Buffer) => void): void;
  onStderr(f: (b: Buffer) => void): void;
  write(b: Buffer): void;
  endStdin(): void;
  /** Sends a signal (by name without "SIG") to the process; ignored once it ended. */
  kill(signal: string): void;
  /** exitCode is 128+N when the process died of signal N (as a shell reports it). */
  readonly exited: Promise<{ exitCode: number; signal: string }>;
}

const SIGNAL_NUMBERS: Record<string, number> = { HUP: 1, INT: 2, QUIT: 3, KILL: 9, TERM: 15 };

/**
 * Starts a command (in a netns when asked) with stdout/stderr streamed to callbacks and stdin
 * open when `stdin` is set. ip netns exec execs the target, so the process group signalled
 * is the command's own.
 */
export async function spawnAttached(
  argv: readonly string[],
  opts: Pick<RunOptions, "netns" | "mountNs" | "env" | "cleanEnv"> & { stdin?: boolean } = {},
): Promise<AttachedProcess> {
  const full = wrapArgv(argv, opts);
  const [file, ...args] = full as [string, ...string[]];
  const env = {
    ...(opts.cleanEnv ? {} : process.env),
    LC_ALL: "C",
    ...(opts.cleanEnv ? { PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" } : {}),
    ...opts.env,
  };
  // Its own process group, so a signal reaches the whole command (a shell and its children),
  // as Ctrl-C in a terminal does.
  const child = spawn(file, args, { stdio: [opts.stdin ? "pipe" : "ignore", "pipe", "pipe"], env, detached: true });
  await new Promise<void>((resolve, reject) => {
    child.once("error", (e) => reject(new NoidError("INTERNAL", `spawning ${argv[0] ?? ""}: ${e.message}`, { cause: e })));
    child.once("spawn", () => resolve());
  });
  let ended = false;
  const exited = new Promise<{ exitCode: number; signal: string }>((resolve) => {
    // "close" fires after the exit and after stdout/stderr were drained.
    child.once("close", (code, sig) => {
      ended = true;
      const name = sig ? sig.replace(/^SIG/, "") : "";
      resolve({ exitCode: code ?? 128 + (SIGNAL_NUMBERS[name] ?? 0), signal: name });
    });
  });
  child.stdin?.on("error", () => undefined); // the command may exit without reading its stdin
  return {
    onStdout: (f) => void child.stdout!.on("data", f),
    onStderr: (f) => void child.stderr!.on("data", f),
    write: (b) => void (child.stdin && !child.stdin.destroyed && child.stdin.write(b)),
    endStdin: () => void child.stdin?.end(),
    kill: (signal) => {
      if (ended || child.pid === undefined) return;
      try {
        process.kill(-child.pid, `SIG${signal}` as NodeJS.Signals);
      } catch {
        child.kill(`SIG${signal}` as NodeJS.Signals);
      }
    },
    exited,
  };
}
