// A throwaway etcd cluster on loopback (three members by default) for HA tests and the chaos
// suite: free ports, data under one temp dir, auto-compaction on. Members can be stopped and
// started again one by one (same ports, same data) to test quorum loss.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, openSync, closeSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { etcdEnv, pickFreePort } from "../coordinator/etcd/embedded.js";

export interface EtcdMember {
  name: string;
  clientUrl: string;
  peerUrl: string;
  dataDir: string;
  pid(): number;
  running(): boolean;
}

export interface TestEtcdCluster {
  /** Client URLs of every member (give all of them to the store). */
  endpoints: string[];
  members: EtcdMember[];
  /** SIGTERM one member and wait until it has exited. */
  stopMember(i: number): Promise<void>;
  /** Start a stopped member again (same ports, same data) and wait until it answers /health. */
  startMember(i: number): Promise<void>;
  stop(): Promise<void>;
}

const SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => existsSync(p));

/** Pure: argv of member `i` of a loopback cluster. */
export function memberArgs(i: number, names: string[], clientPorts: number[], peerPorts: number[], dataDir: string, token: string): string[] {
  const client = `http://127.0.0.1:${clientPorts[i]}`;
  const peer = `http://127.0.0.1:${peerPorts[i]}`;
  return [
    `--name=${names[i]}`,
    `--data-dir=${dataDir}`,
    `--listen-client-urls=${client}`,
    `--advertise-client-urls=${client}`,
    `--listen-peer-urls=${peer}`,
    `--initial-advertise-peer-urls=${peer}`,
    `--initial-cluster=${names.map((n, j) => `${n}=http://127.0.0.1:${peerPorts[j]}`).join(",")}`,
    "--initial-cluster-state=new",
    `--initial-cluster-token=${token}`,
    "--auto-compaction-mode=periodic",
    "--auto-compaction-retention=5m",
    "--logger=zap",
    "--log-outputs=stderr",
    "--unsafe-no-fsync",
  ];
}

export async function startTestEtcdCluster(size = 3): Promise<TestEtcdCluster> {
  const root = await mkdtemp(join(tmpdir(), "noid-test-etcd-cluster-"));
  const names = Array.from({ length: size }, (_, i) => `m${i}`);
  const clientPorts: number[] = [];
  const peerPorts: number[] = [];
  for (let i = 0; i < size; i++) {
    clientPorts.push(await pickFreePort());
    peerPorts.push(await pickFreePort());
  }
  const token = `noid-test-${Math.random().toString(16).slice(2, 10)}`;
  const children: (ChildProcess | undefined)[] = new Array(size).fill(undefined);
  const members: EtcdMember[] = names.map((name, i) => ({
    name,
    clientUrl: `http://127.0.0.1:${clientPorts[i]}`,
    peerUrl: `http://127.0.0.1:${peerPorts[i]}`,
    dataDir: join(root, name, "data"),
    pid: () => children[i]?.pid ?? 0,
    running: () => children[i] !== undefined,
  }));

  const spawnMember = (i: number): void => {
    const m = members[i]!;
    mkdirSync(join(root, m.name), { recursive: true, mode: 0o700 });
    const fd = openSync(join(root, m.name, "etcd.log"), "a", 0o600);
    const args = memberArgs(i, names, clientPorts, peerPorts, m.dataDir, token);
    const [cmd, argv] = SETPRIV ? [SETPRIV, ["--pdeathsig", "KILL", "--", "etcd", ...args]] : ["etcd", args];
    try {
      const child = spawn(cmd, argv, { stdio: ["ignore", fd, fd], env: etcdEnv(process.env) });
      children[i] = child;
      child.once("exit", () => {
        if (children[i] === child) children[i] = undefined;
      });
    } finally {
      closeSync(fd);
    }
  };

  const waitHealthy = async (i: number, timeoutMs = 30_000): Promise<void> => {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      if (!children[i]) throw new Error(`etcd member ${names[i]} exited during start (log: ${join(root, names[i]!, "etcd.log")})`);
      try {
        const res = await fetch(`${members[i]!.clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
        const body = (await res.json()) as { health?: string };
        if (res.ok && body.health === "true") return;
      } catch {
        // not up yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`etcd member ${names[i]} not healthy within ${timeoutMs} ms`);
  };

  const stopMember = async (i: number): Promise<void> => {
    const child = children[i];
    if (!child) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGTERM");
    const t = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  };

  const stopAll = async () => {
    await Promise.all(members.map((_, i) => stopMember(i)));
    await rm(root, { recursive: true, force: true });
  };

  try {
    for (let i = 0; i < size; i++) spawnMember(i);
    // A member is healthy only once the cluster has a leader, so all must be up.
    await Promise.all(members.map((_, i) => waitHealthy(i)));
  } catch (err) {
    await stopAll();
    throw err;
  }

  return {
    endpoints: members.map((m) => m.clientUrl),
    members,
    stopMember,
    startMember: async (i) => {
      if (children[i]) return;
      spawnMember(i);
      await waitHealthy(i);
    },
    stop: stopAll,
  };
}
