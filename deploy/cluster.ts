// A whole Noid cluster on one machine: a coordinator (with its embedded etcd)
// in the root namespace and N agent hosts, each a network namespace of a lab,
// reaching the coordinator through a unix socket. TLS everywhere: clients
// trust the generated cluster CA; each agent joins with a one-time join
// token and then holds an mTLS session with its host certificate. Used by `npm run demo` and
// by the end-to-end tests, so both run exactly the same thing.
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { createLab, destroyLab, labLeftovers, type Lab } from "./lab/lab.js";
import { isAlive, killProcess, processRef, spawnDetached, type ProcessRef } from "../common/run.js";
import { connect, HostState, type NoidClient } from "../sdk/index.js";

/** The repository root, from the source file (tests) or its build output in dist/. */
export const repoRoot = ((): string => {
  let d = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(d, "package.json")) && dirname(d) !== d) d = dirname(d);
  return d;
})();

export interface ClusterOptions {
  /** Prefix of every namespace and link (1-8 of a-z0-9), unique per run. */
  prefix: string;
  /** Directory for the coordinator's state, the socket, logs and the agents' state. */
  dir: string;
  hosts: number;
  /** TCP listen address of the coordinator; clients may also use the unix socket. */
  listen?: string;
  capacity?: { vcpus: number; memoryMb: number; diskGb: number };
  outside?: boolean;
  /** Extra coordinator flags. */
  coordinatorArgs?: string[];
  /** Drivers every agent runs, the default first (default: the agent's own default, sandbox). */
  drivers?: string[];
  /** Each agent serves /metrics on <its lab address>:<port> (reachable from inside the lab namespaces). */
  agentMetricsPort?: number;
  /** Extra flags of host i's agent (0-based), e.g. ["--ingress"]. */
  agentArgs?: (i: number) => string[];
  /** What agent i dials (default: the coordinator's unix socket); tests put a relay in between to cut a host off. */
  agentCoordinator?: (i: number, socket: string) => string;
}

export interface LocalCluster {
  prefix: string;
  dir: string;
  socket: string;
  /** What a client dials: the unix socket. */
  address: string;
  adminToken: string;
  adminTokenFile: string;
  /** The cluster CA (PEM file) clients verify the coordinator with. */
  caFile: string;
  coordinator: ProcessRef;
  lab: Lab;
  agents: ProcessRef[];
  hostNames: string[];
  client(token?: string): NoidClient;
  /** Starts (or restarts) the agent of host i (0-based). */
  startAgent(i: number): Promise<ProcessRef>;
  /** Stops the coordinator (SIGTERM; its embedded etcd with it); agents and VMs keep running. */
  stopCoordinator(): Promise<void>;
  /** Starts the coordinator again on the same state (after stopCoordinator) and waits until it answers. */
  startCoordinator(): Promise<void>;
  stop(): Promise<void>;
}

interface ClusterState {
  coordinator: ProcessRef;
  prefix: string;
}

export async function waitFor<T>(what: string, f: () => Promise<T | undefined>, timeoutMs: number): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last instanceof Error ? `: ${last.message}` : ""}`);
}

function tail(file: string, lines = 5): string {
  return existsSync(file) ? readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join(" | ") : "(no log)";
}

const stateFile = (dir: string) => join(dir, "cluster.json");

export function readClusterState(dir: string): ClusterState | undefined {
  const f = stateFile(dir);
  return existsSync(f) ? (JSON.parse(readFileSync(f, "utf8")) as ClusterState) : undefined;
}

/** Stops everything a cluster in `dir` with `prefix` started, even after a crash of its starter. */
export async function stopLocalCluster(dir: string, prefix: string): Promise<string[]> {
  const st = readClusterState(dir);
  if (st && isAlive(st.coordinator)) await killProcess(st.coordinator, 10_000);
  await destroyLab(prefix);
  // Each agent records the wireguard-go and the DHCP servers it started (they outlive the
  // agent, like VMs do).
  for (const d of existsSync(dir) ? readdirSync(dir).filter((f) => f.startsWith("agent-")) : []) {
    const dhcpDir = join(dir, d, "dhcp");
    const records = [
      join(dir, d, "wireguard-go.json"),
      join(dir, d, "ingress", "nginx.json"),
      ...(existsSync(dhcpDir) ? readdirSync(dhcpDir).filter((f) => f.endsWith(".json")).map((f) => join(dhcpDir, f)) : []),
    ];
    for (const f of records) {
      if (!existsSync(f)) continue;
      const rec = JSON.parse(readFileSync(f, "utf8")) as ProcessRef | { ref: ProcessRef };
      const ref = "ref" in rec ? rec.ref : rec;
      if (isAlive(ref)) await killProcess(ref, 5000);
    }
  }
  rmSync(dir, { recursive: true, force: true });
  return labLeftovers(prefix);
}

export async function startLocalCluster(o: ClusterOptions): Promise<LocalCluster> {
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const socket = join(o.dir, "coordinator.sock");
  const stateDir = join(o.dir, "coordinator");
  const tokenFile = join(stateDir, "admin.token");
  const caFile = join(stateDir, "pki", "ca.crt");
  const clients: NoidClient[] = [];
  const spawnCoordinator = async (): Promise<ProcessRef> => {
    const pid = await spawnDetached(
      [
        process.execPath,
        join(repoRoot, "dist/coordinator/main.js"),
        "--listen",
        o.listen ?? "127.0.0.1:0",
        "--unix-socket",
        socket,
        "--state-dir",
        stateDir,
        ...(o.coordinatorArgs ?? []),
      ],
      { logFile: join(o.dir, "coordinator.log") },
    );
    const ref = processRef(pid);
    if (!ref) throw new Error(`the coordinator exited at once; see ${join(o.dir, "coordinator.log")}`);
    writeFileSync(stateFile(o.dir), JSON.stringify({ coordinator: ref, prefix: o.prefix } satisfies ClusterState));
    return ref;
  };
  let coordinator = await spawnCoordinator();
  let lab: Lab | undefined;
  try {
    await waitFor(
      "the coordinator to write its admin token and socket",
      async () => {
        if (!isAlive(coordinator)) throw new Error(`the coordinator died: ${tail(join(o.dir, "coordinator.log"))}`);
        return existsSync(tokenFile) && existsSync(socket) && existsSync(caFile) ? true : undefined;
      },
      60_000,
    );
    const adminToken = readFileSync(tokenFile, "utf8").trim();
    const caPem = readFileSync(caFile);
    const address = `unix:${socket}`;
    const client = (token = adminToken) => {
      const c = connect({ address, token, tls: { caPem } });
      clients.push(c);
      return c;
    };
    const admin = client();
    await waitFor("the coordinator to answer", () => admin.whoAmI(), 30_000);

    lab = await createLab({ prefix: o.prefix, hosts: o.hosts, outside: o.outside ?? false });
    const theLab = lab;
    const cap = o.capacity ?? { vcpus: 4, memoryMb: 4096, diskGb: 40 };
    const hostNames = theLab.hosts.map((_, i) => `host${i + 1}`);
    const agents: ProcessRef[] = [];
    const startAgent = async (i: number): Promise<ProcessRef> => {
      const h = theLab.hosts[i]!;
      const agentDir = join(o.dir, `agent-${h.name}`);
      // A one-time join token for the first start; later starts use the stored certificate.
      const joinTokenFile = join(o.dir, `join-${h.name}.token`);
      if (!existsSync(join(agentDir, "pki", "host.crt"))) {
        const jt = await admin.createJoinToken({ ttlSeconds: 600, hostName: hostNames[i]! });
        writeFileSync(joinTokenFile, jt.token + "\n", { mode: 0o600 });
      }
      const ref = await theLab.spawn(
        h,
        [
          process.execPath,
          join(repoRoot, "dist/agent/main.js"),
          "--coordinator",
          o.agentCoordinator ? o.agentCoordinator(i, socket) : address,
          "--ca-file",
          caFile,
          "--join-token-file",
          joinTokenFile,
          "--name",
          hostNames[i]!,
          "--address",
          h.address,
          "--state-dir",
          agentDir,
          "--ns-prefix",
          `${o.prefix}-${h.name}`,
          "--vcpus",
          String(cap.vcpus),
          "--memory-mb",
          String(cap.memoryMb),
          "--disk-gb",
          String(cap.diskGb),
          "--label",
          `zone=z${i + 1}`,
          ...(o.drivers ? ["--drivers", o.drivers.join(",")] : []),
          ...(o.agentMetricsPort ? ["--metrics-listen", `${h.address}:${o.agentMetricsPort}`] : []),
          // Lab hosts share one /run: each needs its own wireguard-go socket name.
          "--wg-interface",
          `${o.prefix}wg${i + 1}`,
          ...(o.agentArgs?.(i) ?? []),
        ],
        { logFile: join(o.dir, `agent-${h.name}.log`) },
      );
      agents[i] = ref;
      return ref;
    };
    for (let i = 0; i < o.hosts; i++) await startAgent(i);
    await waitFor(
      `${o.hosts} hosts to join`,
      async () => ((await admin.listHosts()).filter((h) => h.state === HostState.HOST_STATE_READY).length === o.hosts ? true : undefined),
      60_000,
    );
    return {
      prefix: o.prefix,
      dir: o.dir,
      socket,
      address,
      adminToken,
      adminTokenFile: tokenFile,
      caFile,
      get coordinator() {
        return coordinator;
      },
      lab: theLab,
      agents,
      hostNames,
      client,
      startAgent,
      async stopCoordinator() {
        if (isAlive(coordinator)) await killProcess(coordinator, 10_000);
      },
      async startCoordinator() {
        if (isAlive(coordinator)) return;
        coordinator = await spawnCoordinator();
        await waitFor("the coordinator to answer again", () => admin.whoAmI(), 60_000);
      },
      async stop() {
        clients.forEach((c) => c.close());
        await stopLocalCluster(o.dir, o.prefix);
      },
    };
  } catch (e) {
    clients.forEach((c) => c.close());
    await stopLocalCluster(o.dir, o.prefix).catch(() => undefined);
    throw e;
  }
}
