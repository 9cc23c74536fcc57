// Starts what the bench measures: a real etcd of its own (auto-compaction on)
// and a real coordinator on it, either as a child process (the bench) or in
// this process (the harness test, which runs from TypeScript sources).
import { fork } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { monitorEventLoopDelay, performance } from "node:perf_hooks";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { Etcd3 } from "etcd3";
import type { Registry } from "prom-client";
import { silentLogger } from "../common/logger.js";
import { resolveConfig } from "../coordinator/config.js";
import { startEmbeddedEtcd, type EmbeddedEtcd } from "../coordinator/etcd/embedded.js";
import type { PlacementStats } from "../coordinator/controllers/placement.js";

export interface BenchEtcd {
  endpoints: string[];
  client: Etcd3;
  etcd: EmbeddedEtcd;
  /** Current revision: it grows by one per write transaction. */
  revision(): Promise<number>;
  /** Counters from etcd's Prometheus endpoint (e.g. etcd_mvcc_put_total). */
  metrics(): Promise<Record<string, number>>;
  stop(): Promise<void>;
}

export async function startBenchEtcd(opts: { fsync: boolean }): Promise<BenchEtcd> {
  const dir = mkdtempSync(join(tmpdir(), "noid-bench-etcd-"));
  let etcd: EmbeddedEtcd;
  try {
    etcd = await startEmbeddedEtcd({ dataDir: dir, autoCompactionRetention: "1m", unsafeNoFsync: !opts.fsync, quotaBackendBytes: 8 * 1024 ** 3 });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  const client = new Etcd3({ hosts: etcd.endpoints });
  return {
    endpoints: etcd.endpoints,
    client,
    etcd,
    async revision() {
      const r = await client.get("/noid-bench-none").exec();
      return Number(r.header.revision);
    },
    async metrics() {
      const text = await (await fetch(`${etcd.endpoints[0]}/metrics`)).text();
      const out: Record<string, number> = {};
      for (const line of text.split("\n")) {
        const m = /^([a-z_]+)(?:\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
        if (m) out[m[1]!] = (out[m[1]!] ?? 0) + Number(m[2]);
      }
      return out;
    },
    async stop() {
      client.close();
      try {
        await etcd.stop();
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    },
  };
}

export interface CoordStats {
  rss: number;
  heapUsed: number;
  placement: PlacementStats;
  cpu: { user: number; system: number };
  /** The coordinator's event loop since the previous stats call: delay p99 and max (ms), utilisation (0..1). */
  loop: LoopStats;
  /** etcd requests the coordinator has made so far, by store operation (txn, get, lease_keepalive, ...). */
  storeCalls: Record<string, number>;
  /** Seconds spent in etcd calls, per operation, as the coordinator timed them. */
  storeSeconds: Record<string, number>;
}

/** Store operation -> calls made, from the coordinator's noid_etcd_request_duration_seconds histogram. */
export async function storeCalls(registry: Registry, what: "_count" | "_sum" = "_count"): Promise<Record<string, number>> {
  const m = registry.getSingleMetric("noid_etcd_request_duration_seconds");
  const out: Record<string, number> = {};
  if (!m) return out;
  for (const v of (await m.get()).values as { value: number; labels: Record<string, string | number | undefined>; metricName?: string }[]) {
    if (v.metricName?.endsWith(what) && typeof v.labels.op === "string") out[v.labels.op] = v.value;
  }
  return out;
}

/** Mean milliseconds per call between two readings, per operation ("txn 4.1, get 1.2"; those called at least `min` times). */
export function storeMeanMs(from: CoordStats, to: CoordStats, min = 10): string {
  return Object.entries(to.storeCalls)
    .map(([op, n]) => [op, n - (from.storeCalls[op] ?? 0), (to.storeSeconds[op] ?? 0) - (from.storeSeconds[op] ?? 0)] as const)
    .filter(([, n]) => n >= min)
    .sort((a, b) => b[1] - a[1])
    .map(([op, n, s]) => `${op} ${((1000 * s) / n).toFixed(1)}`)
    .join(", ");
}

/** What `to` added over `from`, per operation, as "txn 1.2, get 0.4" per `per` (nonzero only, largest first). */
export function storeCallsPer(from: Record<string, number>, to: Record<string, number>, per: number): string {
  return Object.entries(to)
    .map(([op, n]) => [op, (n - (from[op] ?? 0)) / per] as const)
    .filter(([, x]) => x > 0)
    .sort((a, b) => b[1] - a[1])
    .map(([op, x]) => `${op} ${x.toFixed(2)}`)
    .join(", ");
}

export interface LoopStats {
  delayP99Ms: number;
  delayMaxMs: number;
  utilisation: number;
}

/** Event-loop delay and utilisation of this process, each read covering the time since the one before. */
export function loopMonitor(): () => LoopStats {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  let elu = performance.eventLoopUtilization();
  return () => {
    const now = performance.eventLoopUtilization();
    const r = { delayP99Ms: h.percentile(99) / 1e6, delayMaxMs: h.max / 1e6, utilisation: performance.eventLoopUtilization(now, elu).utilization };
    elu = now;
    h.reset();
    return r;
  };
}

export interface BenchCoordinator {
  address: string;
  adminToken: string;
  /** Coordinator process id (this process when inline). */
  pid: number;
  inline: boolean;
  /** Memory (after a GC when `gc` and possible) and placement counters. */
  stats(o?: { gc?: boolean }): Promise<CoordStats>;
  /** Profiles the coordinator from now until profileStop (a child only; inline, profile the bench process). */
  profileStart(): Promise<void>;
  /** Writes `<dir>/<name>.cpuprofile`; returns its path ("" inline). */
  profileStop(dir: string, name: string): Promise<string>;
  stop(): Promise<void>;
}

export interface CoordinatorOptions {
  endpoints: string[];
  prefix?: string;
  inline?: boolean;
  /** Extra node flags for the child (e.g. --cpu-prof). */
  execArgv?: string[];
}

function benchConfig(endpoints: string[], stateDir: string, prefix: string): Record<string, unknown> {
  return {
    server: { listen: "127.0.0.1:0", insecure: true },
    state_dir: stateDir,
    etcd: { endpoints, prefix },
    logging: { level: "silent" },
    // The bench creates many VMs for a few tenants; the default limits are for small clusters.
    limits: { max_vms_per_user: 1_000_000, max_total_vms: 10_000_000 },
    auth: { max_failures_per_minute: 10_000 },
  };
}

export async function startBenchCoordinator(o: CoordinatorOptions): Promise<BenchCoordinator> {
  const stateDir = mkdtempSync(join(tmpdir(), "noid-bench-coord-"));
  const cfg = benchConfig(o.endpoints, stateDir, o.prefix ?? "/noid/v1/");
  if (o.inline) {
    const { startCoordinator } = await import("../coordinator/server.js");
    const handle = await startCoordinator({ config: resolveConfig(cfg), logger: silentLogger() });
    const loop = loopMonitor();
    return {
      address: handle.address,
      adminToken: readFileSync(handle.adminTokenFile, "utf8").trim(),
      pid: process.pid,
      inline: true,
      async stats() {
        const mem = process.memoryUsage();
        return { rss: mem.rss, heapUsed: mem.heapUsed, placement: { ...(handle.placement?.stats ?? { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0 }) }, cpu: process.cpuUsage(), loop: loop(), storeCalls: await storeCalls(handle.metrics.registry), storeSeconds: await storeCalls(handle.metrics.registry, "_sum") };
      },
      profileStart: async () => undefined,
      profileStop: async () => "",
      async stop() {
        await handle.stop();
        rmSync(stateDir, { recursive: true, force: true });
      },
    };
  }
  const here = dirname(fileURLToPath(import.meta.url));
  const child = fork(join(here, "coordinator-proc.js"), [], {
    env: { ...process.env, NOID_BENCH_CONFIG: JSON.stringify(cfg) },
    execArgv: ["--expose-gc", ...(o.execArgv ?? [])],
    stdio: ["ignore", "inherit", "inherit", "ipc"],
  });
  let seq = 0;
  const waiting = new Map<number, (m: unknown) => void>();
  const ready = new Promise<{ address: string; adminToken: string }>((resolve, reject) => {
    child.on("message", (m: { id?: number; type?: string; address?: string; adminToken?: string }) => {
      if (m.type === "ready") resolve({ address: m.address!, adminToken: m.adminToken! });
      else if (m.id !== undefined) {
        waiting.get(m.id)?.(m);
        waiting.delete(m.id);
      }
    });
    child.once("exit", (code) => reject(new Error(`bench coordinator exited (code ${code}) before it was ready`)));
  });
  const ask = <T>(type: string, extra: Record<string, string> = {}): Promise<T> =>
    new Promise((resolve) => {
      const id = ++seq;
      waiting.set(id, resolve as (m: unknown) => void);
      child.send({ id, type, ...extra });
    });
  let r: { address: string; adminToken: string };
  try {
    r = await ready;
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(stateDir, { recursive: true, force: true });
    throw e;
  }
  return {
    ...r,
    pid: child.pid!,
    inline: false,
    stats: (o) => ask<CoordStats>("stats", o?.gc ? { gc: "1" } : {}),
    profileStart: () => ask<void>("profStart"),
    profileStop: async (dir, name) => (await ask<{ file: string }>("profStop", { dir, name })).file,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) {
        rmSync(stateDir, { recursive: true, force: true });
        return;
      }
      const exited = new Promise((res) => child.once("exit", res));
      await Promise.race([ask("stop"), new Promise((res) => setTimeout(res, 10_000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
      await exited;
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}
