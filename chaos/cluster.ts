// The cluster the chaos suite hurts: a three-member etcd on loopback, three
// coordinator processes (the built dist/coordinator/main.js) and a few hosts,
// each a process running the real agent session, reconcile loop and fencing
// over an in-memory driver (chaos/agent-proc.ts). Every host reaches the
// coordinators through TCP relays of its own, so its "underlay" can be cut.
import { fork, spawn, type ChildProcess } from "node:child_process";
import { closeSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { pickFreePort } from "../coordinator/etcd/embedded.js";
import { HostState, connect, type NoidClient } from "../sdk/index.js";
import { startTestEtcdCluster, type TestEtcdCluster } from "./etcd-cluster.js";
import type { ChaosAgentConfig } from "./agent-proc.js";

/** The repository root (from chaos/ sources or dist/chaos/). */
export const root = ((): string => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, "package.json")) && dirname(d) !== d) d = dirname(d);
  return d;
})();

export interface ChaosTimings {
  /** Leader lease (s). */
  leaderLeaseSeconds: number;
  /** Agents' lease TTL (s). */
  agentLeaseSeconds: number;
  heartbeatMs: number;
  /** Host-loss grace (s) of the reschedule-policy VMs. */
  graceSeconds: number;
}

export const TIMINGS: ChaosTimings = { leaderLeaseSeconds: 2, agentLeaseSeconds: 2, heartbeatMs: 400, graceSeconds: 4 };

const SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));

export const HOST_CAPACITY = { vcpus: 8, memoryMb: 8192, diskGb: 100 };

/** A TCP relay: cut() drops every connection and stops listening; restore() listens again on the same port. */
export class Relay {
  private server?: Server;
  private readonly conns = new Set<Socket>();
  constructor(
    readonly port: number,
    private readonly targetPort: number,
  ) {}
  get address(): string {
    return `127.0.0.1:${this.port}`;
  }
  get isCut(): boolean {
    return this.server === undefined;
  }
  async restore(): Promise<void> {
    if (this.server) return;
    const server = createServer((c) => {
      const up = createConnection({ host: "127.0.0.1", port: this.targetPort });
      this.conns.add(c).add(up);
      const drop = () => {
        c.destroy();
        up.destroy();
        this.conns.delete(c);
        this.conns.delete(up);
      };
      c.on("error", drop).on("close", drop);
      up.on("error", drop).on("close", drop);
      c.pipe(up).pipe(c);
    });
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(this.port, "127.0.0.1", () => resolve());
    });
  }
  async cut(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const c of this.conns) c.destroy();
    this.conns.clear();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }
}

export interface CoordProc {
  index: number;
  port: number;
  dir: string;
  child?: ChildProcess;
  paused: boolean;
}

export interface HostProc {
  name: string;
  dir: string;
  child?: ChildProcess;
  relays: Relay[];
  /** The VMs it last said it runs (kept while it is dead: a killed agent's VMs run on). */
  running: string[];
}

export interface ChaosCluster {
  etcd: TestEtcdCluster;
  prefix: string;
  token: string;
  coords: CoordProc[];
  hosts: HostProc[];
  timings: ChaosTimings;
  /** Called on each running-set report of a host. */
  onRunning?: (host: string, running: string[], at: number) => void;
  client(): NoidClient;
  alive(c: CoordProc): boolean;
  startCoordinator(i: number): Promise<void>;
  signalCoordinator(i: number, sig: NodeJS.Signals): void;
  killCoordinator(i: number): Promise<void>;
  startHost(i: number): Promise<void>;
  killHost(i: number): Promise<void>;
  /** Index of the replica whose health says it leads (undefined: none or several). */
  leader(): Promise<number | undefined>;
  stop(): Promise<void>;
}

function coordinatorConfig(c: CoordProc, endpoints: string[], prefix: string, t: ChaosTimings): string {
  return [
    `state_dir = "${c.dir}"`,
    "[server]",
    `listen = "127.0.0.1:${c.port}"`,
    "insecure = true",
    "[etcd]",
    `endpoints = [${endpoints.map((e) => `"${e}"`).join(", ")}]`,
    `prefix = "${prefix}"`,
    "[ha]",
    `leader_lease_seconds = ${t.leaderLeaseSeconds}`,
    `node_id = "chaos-c${c.index}"`,
    "[agents]",
    `lease_ttl_seconds = ${t.agentLeaseSeconds}`,
    `heartbeat_interval_ms = ${t.heartbeatMs}`,
    "[host_loss]",
    'policy = "keep"',
    `grace_seconds = ${t.graceSeconds}`,
    // The storm makes and destroys hundreds of VMs a minute in one /24: with the
    // default 300 s reuse grace it ran out of addresses after a few runs (every
    // later create refused). A short grace keeps it going and makes addresses
    // really get reused during a run, which the "no IP twice" check then covers.
    "[networks]",
    "ip_reuse_grace_seconds = 2",
    "[limits]",
    "max_vms_per_user = 10000",
    "max_total_vms = 10000",
    "[auth]",
    "max_failures_per_minute = 10000",
    "[logging]",
    'level = "warn"',
  ].join("\n");
}

export function health(address: string, service: string): Promise<string> {
  const def = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { enums: String })) as unknown as {
    grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client & { check: Function } } } };
  };
  const client = new def.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) =>
    client.check({ service }, { deadline: Date.now() + 1500 }, (err: Error | null, res: { status: string }) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    }),
  );
}

async function until<T>(what: string, f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`chaos: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startChaosCluster(o: { hosts: number; coordinators?: number; timings?: ChaosTimings; log?: (s: string) => void; noFencing?: boolean }): Promise<ChaosCluster> {
  const t = o.timings ?? TIMINGS;
  const log = o.log ?? (() => undefined);
  const base = mkdtempSync(join(tmpdir(), "noid-chaos-"));
  const prefix = `/chaos${Math.random().toString(16).slice(2, 8)}/`;
  const mainJs = join(root, "dist", "coordinator", "main.js");
  const agentJs = join(root, "dist", "chaos", "agent-proc.js");
  for (const f of [mainJs, agentJs]) if (!existsSync(f)) throw new Error(`chaos: ${f} is missing; run npm run build`);
  const etcd = await startTestEtcdCluster(3).catch((e: unknown) => {
    rmSync(base, { recursive: true, force: true });
    throw e;
  });
  log(`etcd: 3 members (${etcd.endpoints.join(", ")})`);
  const coords: CoordProc[] = [];
  const hosts: HostProc[] = [];
  const clients: NoidClient[] = [];
  let token = "";
  const alive = (c: CoordProc) => c.child !== undefined && c.child.exitCode === null && c.child.signalCode === null;

  const cluster: ChaosCluster = {
    etcd,
    prefix,
    get token() {
      return token;
    },
    coords,
    hosts,
    timings: t,
    client() {
      const c = connect({ address: coords.map((x) => `127.0.0.1:${x.port}`).join(","), token, insecure: true, deadlineMs: 3000, retries: 2 });
      clients.push(c);
      return c;
    },
    alive,
    async startCoordinator(i) {
      const c = coords[i]!;
      if (alive(c)) return;
      const cfg = join(c.dir, "coordinator.toml");
      writeFileSync(cfg, coordinatorConfig(c, etcd.endpoints, prefix, t) + "\n");
      const fd = openSync(join(c.dir, "coordinator.log"), "a");
      // With setpriv, a coordinator dies with the suite even when the suite is killed.
      const argv = [process.execPath, mainJs, "--config", cfg];
      const [cmd, args] = SETPRIV ? [SETPRIV, ["--pdeathsig", "KILL", "--", ...argv]] : [argv[0]!, argv.slice(1)];
      const child = spawn(cmd, args, { stdio: ["ignore", fd, fd] });
      closeSync(fd);
      c.child = child;
      c.paused = false;
      await until(`coordinator ${i}`, async () => (alive(c) && existsSync(join(c.dir, "admin.token")) && (await health(`127.0.0.1:${c.port}`, "")) === "SERVING" ? true : undefined), 30_000);
    },
    signalCoordinator(i, sig) {
      const c = coords[i]!;
      if (!alive(c)) return;
      c.child!.kill(sig);
      if (sig === "SIGSTOP") c.paused = true;
      if (sig === "SIGCONT") c.paused = false;
    },
    async killCoordinator(i) {
      const c = coords[i]!;
      if (!alive(c)) return;
      const exited = new Promise((r) => c.child!.once("exit", r));
      c.child!.kill("SIGCONT");
      c.child!.kill("SIGKILL");
      await exited;
      c.paused = false;
    },
    async startHost(i) {
      const h = hosts[i]!;
      if (h.child && h.child.exitCode === null && h.child.signalCode === null) return;
      const cfg: ChaosAgentConfig = { name: h.name, addresses: h.relays.map((r) => r.address), token, dir: h.dir, capacity: HOST_CAPACITY, noFencing: o.noFencing ?? false };
      const fd = openSync(join(h.dir, "agent.log"), "a");
      const child = fork(agentJs, [], { env: { ...process.env, NOID_CHAOS_AGENT: JSON.stringify(cfg) }, stdio: ["ignore", fd, fd, "ipc"] });
      closeSync(fd);
      h.child = child;
      const ready = new Promise<void>((resolve, reject) => {
        child.on("message", (m: { type: string; running?: string[] }) => {
          if (m.type === "ready") resolve();
          if (m.type === "running" && h.child === child) {
            h.running = m.running ?? [];
            cluster.onRunning?.(h.name, h.running, Date.now());
          }
        });
        child.once("exit", (code) => reject(new Error(`chaos host ${h.name} exited (${code}) before it was ready`)));
      });
      await ready;
    },
    async killHost(i) {
      const h = hosts[i]!;
      const child = h.child;
      if (!child || child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      child.kill("SIGKILL");
      await exited;
    },
    async leader() {
      const l: number[] = [];
      for (const c of coords) {
        if (!alive(c) || c.paused) continue;
        if ((await health(`127.0.0.1:${c.port}`, "noid.v1.Leader").catch(() => "")) === "SERVING") l.push(c.index);
      }
      return l.length === 1 ? l[0] : undefined;
    },
    async stop() {
      clients.forEach((c) => c.close());
      for (const h of hosts) {
        await cluster.killHost(hosts.indexOf(h)).catch(() => undefined);
        for (const r of h.relays) await r.cut();
      }
      for (const c of coords) await cluster.killCoordinator(c.index).catch(() => undefined);
      await etcd.stop();
      // NOID_CHAOS_KEEP=1 keeps the logs (coordinator-*/coordinator.log, host-*/agent.log).
      if (process.env.NOID_CHAOS_KEEP) log(`kept ${base}`);
      else rmSync(base, { recursive: true, force: true });
    },
  };

  try {
    for (let i = 0; i < (o.coordinators ?? 3); i++) {
      const dir = join(base, `coordinator-${i}`);
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      coords.push({ index: i, port: await pickFreePort(), dir, paused: false });
    }
    // One admin token for all: the first replica creates it, the others (started together) find it in etcd.
    await cluster.startCoordinator(0);
    token = readFileSync(join(coords[0]!.dir, "admin.token"), "utf8").trim();
    for (const c of coords.slice(1)) copyFileSync(join(coords[0]!.dir, "admin.token"), join(c.dir, "admin.token"));
    await Promise.all(coords.slice(1).map((c) => cluster.startCoordinator(c.index)));
    log(`coordinators: ${coords.map((c) => c.port).join(", ")}`);
    for (let i = 0; i < o.hosts; i++) {
      const dir = join(base, `host-${i}`);
      mkdirSync(dir, { recursive: true });
      const relays: Relay[] = [];
      for (const c of coords) {
        const r = new Relay(await pickFreePort(), c.port);
        await r.restore();
        relays.push(r);
      }
      hosts.push({ name: `chaos-h${i}`, dir, relays, running: [] });
      await cluster.startHost(i);
    }
    const admin = cluster.client();
    await until(`${o.hosts} hosts ready`, async () => ((await admin.listHosts()).filter((h) => h.state === HostState.HOST_STATE_READY).length === o.hosts ? true : undefined), 30_000);
    log(`hosts: ${hosts.map((h) => h.name).join(", ")}`);
  } catch (e) {
    await cluster.stop().catch(() => undefined);
    throw e;
  }
  return cluster;
}
