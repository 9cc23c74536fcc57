// The single-node etcd the coordinator runs by default: Debian's etcd 3.4
// binary as a supervised child process on 127.0.0.1 only. Deciding (argv,
// restart delays) is pure; this file's I/O is spawning, health polling,
// signalling and waiting for exit.
//
// Layout under dataDir (mode 0700): data/ is etcd's --data-dir (a subfolder,
// because etcd warns about any foreign file next to member/), etcd.log is
// etcd's own output (never our stdout), rotated once at 10 MB.
import { spawn, type ChildProcess } from "node:child_process";
import { chmodSync, closeSync, existsSync, mkdirSync, openSync, readSync, renameSync, statSync, fstatSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { NoidError } from "../../common/errors.js";
import { silentLogger, type Logger } from "../../common/logger.js";

export interface EmbeddedEtcdOptions {
  dataDir: string;
  /** 0 or omitted: pick a free port. */
  clientPort?: number;
  /** 0 or omitted: pick a free port. */
  peerPort?: number;
  name?: string;
  logger?: Logger;
  /** Periodic auto-compaction window; default "5m". */
  autoCompactionRetention?: string;
  quotaBackendBytes?: number;
  /** Tests only: skip fsync (--unsafe-no-fsync). Loses data on power failure. */
  unsafeNoFsync?: boolean;
  /** How long to wait for /health after a start; default 20 s. */
  startTimeoutMs?: number;
  /** How long stop() waits after SIGTERM before SIGKILL; default 10 s. */
  stopTimeoutMs?: number;
  /** The etcd binary; default "etcd" from PATH. */
  binary?: string;
}

export interface EmbeddedEtcd {
  readonly endpoints: string[];
  /** Pid of the current etcd process (changes after a restart). */
  readonly pid: number;
  /** Stops supervision, SIGTERM, SIGKILL after the stop timeout; resolves once it has exited. */
  stop(): Promise<void>;
  /** Sends a signal to the current process (default SIGKILL); an exit it causes is restarted by the supervisor. */
  kill(signal?: NodeJS.Signals): void;
  /** Stops etcd (if running) and starts it again on the same ports and data; resumes supervision. */
  restart(): Promise<void>;
}

export interface EtcdArgsInput {
  name: string;
  dataDir: string;
  clientPort: number;
  peerPort: number;
  autoCompactionRetention: string;
  quotaBackendBytes?: number;
  unsafeNoFsync?: boolean;
}

/** Pure: etcd 3.4's argv for a single loopback-only member. */
export function etcdArgs(i: EtcdArgsInput): string[] {
  const client = `http://127.0.0.1:${i.clientPort}`;
  const peer = `http://127.0.0.1:${i.peerPort}`;
  const args = [
    `--name=${i.name}`,
    `--data-dir=${i.dataDir}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=${i.name}=${peer}`,
    // Both only matter on first boot; later boots read the member from data-dir.
    "--initial-cluster-state=new",
    "--initial-cluster-token=noid-embedded",
    "--auto-compaction-mode=periodic",
    `--auto-compaction-retention=${i.autoCompactionRetention}`,
    // 3.4 defaults to capnslog and may log to journald; zap on stderr lands in our log file.
    "--logger=zap",
    "--log-outputs=stderr",
  ];
  if (i.quotaBackendBytes !== undefined) args.push(`--quota-backend-bytes=${i.quotaBackendBytes}`);
  if (i.unsafeNoFsync) args.push("--unsafe-no-fsync");
  return args;
}

const MIN_RESTART_DELAY_MS = 200;
const MAX_RESTART_DELAY_MS = 10_000;
/** A process that ran this long was healthy; its crash starts the backoff over. */
const STABLE_AFTER_MS = 30_000;

/** Pure: how long to wait before restarting a process that died after running `ranForMs`. */
export function restartDelay(previousDelayMs: number, ranForMs: number): number {
  if (ranForMs >= STABLE_AFTER_MS || previousDelayMs <= 0) return MIN_RESTART_DELAY_MS;
  return Math.min(previousDelayMs * 2, MAX_RESTART_DELAY_MS);
}

/** Binds port 0 on loopback and returns the port the kernel chose. */
export function pickFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => (port ? resolve(port) : reject(new Error("no port assigned"))));
    });
  });
}

/** Throws if something already listens on the port: /health would then answer for a foreign process. */
async function ensurePortFree(port: number, what: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once("error", (err: NodeJS.ErrnoException) =>
      reject(new NoidError("FAILED_PRECONDITION", `etcd ${what} port 127.0.0.1:${port} is not free: ${err.code ?? err.message}`, { cause: err })),
    );
    srv.listen(port, "127.0.0.1", () => srv.close(() => resolve()));
  });
}

const LOG_ROTATE_BYTES = 10 * 1024 * 1024;
const SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));

function tail(file: string, bytes = 4000): string {
  try {
    const fd = openSync(file, "r");
    try {
      const size = fstatSync(fd).size;
      const buf = Buffer.alloc(Math.min(bytes, size));
      readSync(fd, buf, 0, buf.length, size - buf.length);
      return buf.toString("utf8");
    } finally {
      closeSync(fd);
    }
  } catch {
    return "(no etcd log)";
  }
}

/** Pure: our environment minus ETCD_* variables, which etcd would read as flags (and reject as conflicting). */
export function etcdEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([k]) => !k.startsWith("ETCD_")));
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class Supervisor implements EmbeddedEtcd {
  readonly endpoints: string[];
  private child?: ChildProcess;
  private exited?: Promise<void>;
  private stopped = true;
  private restartTimer?: NodeJS.Timeout;
  private delayMs = 0;
  private readonly logFile: string;
  private readonly log: Logger;

  constructor(
    private readonly opts: EmbeddedEtcdOptions,
    private readonly args: string[],
    private readonly clientPort: number,
    private readonly peerPort: number,
  ) {
    this.endpoints = [`http://127.0.0.1:${clientPort}`];
    this.logFile = join(opts.dataDir, "etcd.log");
    this.log = opts.logger ?? silentLogger();
  }

  get pid(): number {
    return this.child?.pid ?? 0;
  }

  /** Spawns etcd and waits until it answers /health; throws with the log's tail if it does not. */
  async start(): Promise<void> {
    await ensurePortFree(this.clientPort, "client");
    await ensurePortFree(this.peerPort, "peer");
    this.stopped = false;
    const child = this.spawnOnce();
    try {
      await this.waitHealthy(child, this.opts.startTimeoutMs ?? 20_000);
    } catch (err) {
      this.stopped = true;
      await this.terminate();
      throw err;
    }
  }

  kill(signal: NodeJS.Signals = "SIGKILL"): void {
    if (this.child?.pid) process.kill(this.child.pid, signal);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.restartTimer);
    await this.terminate();
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  private spawnOnce(): ChildProcess {
    this.rotateLog();
    const fd = openSync(this.logFile, "a", 0o600);
    const bin = this.opts.binary ?? "etcd";
    // setpriv makes the kernel TERM etcd if we die without stopping it (no orphans); it execs, so the pid is etcd's.
    const [cmd, argv] = SETPRIV ? [SETPRIV, ["--pdeathsig", "TERM", "--", bin, ...this.args]] : [bin, this.args];
    let child: ChildProcess;
    try {
      child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], env: etcdEnv(process.env) });
    } finally {
      closeSync(fd); // the child holds its own copy
    }
    const startedAt = Date.now();
    this.child = child;
    this.exited = new Promise((resolve) => {
      child.once("exit", (code, signal) => {
        if (this.child === child) this.child = undefined;
        resolve();
        if (this.stopped) return;
        this.delayMs = restartDelay(this.delayMs, Date.now() - startedAt);
        this.log.warn({ code, signal, restartInMs: this.delayMs, log: this.logFile }, "etcd exited unexpectedly; restarting");
        this.restartTimer = setTimeout(() => void this.supervisedRestart(), this.delayMs);
      });
      child.once("error", (err) => {
        // spawn failed (e.g. binary missing): 'exit' may not follow.
        this.log.error({ err }, "cannot run etcd");
        if (this.child === child) this.child = undefined;
        resolve();
      });
    });
    this.log.info({ pid: child.pid, endpoints: this.endpoints }, "etcd started");
    return child;
  }

  private async supervisedRestart(): Promise<void> {
    if (this.stopped || this.child) return;
    const child = this.spawnOnce();
    try {
      await this.waitHealthy(child, this.opts.startTimeoutMs ?? 20_000);
      this.log.info({ pid: child.pid }, "etcd healthy again");
    } catch (err) {
      // The exit handler schedules the next attempt if it died; if it hangs unhealthy, kill it so it does.
      this.log.error({ err }, "restarted etcd did not become healthy");
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
    }
  }

  private async waitHealthy(child: ChildProcess, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const url = `${this.endpoints[0]}/health`;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null || this.child !== child) {
        throw new NoidError("UNAVAILABLE", `etcd exited during start (code ${child.exitCode}, signal ${child.signalCode}); last output:\n${tail(this.logFile)}`);
      }
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
        const body = (await res.json()) as { health?: string };
        if (res.ok && body.health === "true") return;
      } catch {
        // not listening yet
      }
      await sleep(100);
    }
    throw new NoidError("UNAVAILABLE", `etcd not healthy within ${timeoutMs} ms at ${url}; last output:\n${tail(this.logFile)}`);
  }

  /** SIGTERM, then SIGKILL after the stop timeout; resolves once the process is gone. */
  private async terminate(): Promise<void> {
    const child = this.child;
    const exited = this.exited;
    if (!child || !exited || child.exitCode !== null || child.signalCode !== null) {
      await exited;
      return;
    }
    child.kill("SIGCONT"); // a stopped (SIGSTOP) process would never act on SIGTERM
    child.kill("SIGTERM");
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      exited.then(() => false),
      new Promise<boolean>((r) => {
        timer = setTimeout(() => r(true), this.opts.stopTimeoutMs ?? 10_000);
      }),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      this.log.warn({ pid: child.pid }, "etcd ignored SIGTERM; killing");
      child.kill("SIGKILL");
      await exited;
    }
  }

  private rotateLog(): void {
    try {
      if (statSync(this.logFile).size > LOG_ROTATE_BYTES) renameSync(this.logFile, `${this.logFile}.1`);
    } catch {
      // no log yet
    }
  }
}

export async function startEmbeddedEtcd(opts: EmbeddedEtcdOptions): Promise<EmbeddedEtcd> {
  mkdirSync(opts.dataDir, { recursive: true, mode: 0o700 });
  chmodSync(opts.dataDir, 0o700); // etcd refuses a group/world-readable data dir only with a warning; we insist
  const etcdDir = join(opts.dataDir, "data");
  const pickPorts = !opts.clientPort || !opts.peerPort;
  // A port picked free can be taken before etcd binds it; with picked ports, try again with new ones.
  for (let attempt = 1; ; attempt++) {
    const clientPort = opts.clientPort || (await pickFreePort());
    const peerPort = opts.peerPort || (await pickFreePort());
    const args = etcdArgs({
      name: opts.name ?? "noid",
      dataDir: etcdDir,
      clientPort,
      peerPort,
      autoCompactionRetention: opts.autoCompactionRetention ?? "5m",
      ...(opts.quotaBackendBytes !== undefined ? { quotaBackendBytes: opts.quotaBackendBytes } : {}),
      ...(opts.unsafeNoFsync ? { unsafeNoFsync: true } : {}),
    });
    const sup = new Supervisor(opts, args, clientPort, peerPort);
    try {
      await sup.start();
      return sup;
    } catch (err) {
      if (pickPorts && attempt < 3 && /not free|address already in use/.test((err as Error).message)) continue;
      throw err;
    }
  }
}
