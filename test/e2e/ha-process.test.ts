// Coordinator replicas as real processes (dist/coordinator/main.js, built by
// `npm test`): SIGKILL the leader during a stream of creates, and SIGSTOP a
// leader past its lease then SIGCONT it. Leader status is read from the
// outside, through the health service noid.v1.Leader.
import { spawn, type ChildProcess } from "node:child_process";
import { copyFileSync, existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { pickFreePort } from "../../coordinator/etcd/embedded.js";
import { createEtcdStore } from "../../coordinator/store/index.js";
import { keys } from "../../coordinator/state/keys.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import { connect, type NoidClient } from "../../sdk/index.js";
import { eventually } from "../helpers/coordinator.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { SimAgent } from "../helpers/sim-agent.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const MAIN = join(repo, "dist", "coordinator", "main.js");
const LEASE_SECONDS = 2;

let etcd: TestEtcd;
beforeAll(async () => {
  etcd = await startTestEtcd();
}, 60_000);
afterAll(async () => {
  await etcd?.stop();
});

interface Proc {
  child: ChildProcess;
  address: string;
  dir: string;
  alive: boolean;
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

function writeConfig(dir: string, port: number, prefix: string): string {
  const file = join(dir, "coordinator.toml");
  writeFileSync(
    file,
    [
      `state_dir = "${dir}"`,
      "[server]",
      `listen = "127.0.0.1:${port}"`,
      "insecure = true",
      "[etcd]",
      `endpoints = [${etcd.endpoints.map((e) => `"${e}"`).join(", ")}]`,
      `prefix = "${prefix}"`,
      "[ha]",
      `leader_lease_seconds = ${LEASE_SECONDS}`,
      "[agents]",
      "lease_ttl_seconds = 3",
      "heartbeat_interval_ms = 500",
      "[limits]",
      "max_vms_per_user = 100",
      "max_total_vms = 200",
      "[logging]",
      'level = "info"',
    ].join("\n") + "\n",
  );
  return file;
}

async function startProc(dir: string, prefix: string): Promise<Proc> {
  const port = await pickFreePort();
  const cfg = writeConfig(dir, port, prefix);
  const fd = openSync(join(dir, "coordinator.log"), "a");
  const child = spawn(process.execPath, [MAIN, "--config", cfg], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  const p: Proc = { child, address: `127.0.0.1:${port}`, dir, alive: true };
  child.once("exit", () => (p.alive = false));
  await eventually(async () => p.alive && existsSync(join(dir, "admin.token")) && (await health(p.address, "").catch(() => "")) === "SERVING", 30_000, `coordinator on ${p.address}`);
  return p;
}

async function startReplicas(n: number): Promise<{ procs: Proc[]; token: string; prefix: string; client: () => NoidClient }> {
  const prefix = `/hp${Math.random().toString(16).slice(2, 8)}/`;
  const procs: Proc[] = [];
  const clients: NoidClient[] = [];
  cleanups.push(async () => {
    clients.forEach((c) => c.close());
    for (const p of procs) {
      if (!p.alive) continue;
      const exited = new Promise((r) => p.child.once("exit", r));
      p.child.kill("SIGCONT");
      p.child.kill("SIGKILL");
      await exited;
    }
    procs.forEach((p) => rmSync(p.dir, { recursive: true, force: true }));
  });
  for (let i = 0; i < n; i++) {
    const dir = mkdtempSync(join(tmpdir(), "noid-hap-"));
    if (i > 0) for (const f of ["admin.token", "secrets.key"]) copyFileSync(join(procs[0]!.dir, f), join(dir, f));
    procs.push(await startProc(dir, prefix));
  }
  const token = readFileSync(join(procs[0]!.dir, "admin.token"), "utf8").trim();
  return {
    procs,
    token,
    prefix,
    client: () => {
      const c = connect({ address: procs.map((p) => p.address).join(","), token, insecure: true, deadlineMs: 5000, retries: 5 });
      clients.push(c);
      return c;
    },
  };
}

function health(address: string, service: string): Promise<string> {
  const def = grpc.loadPackageDefinition(protoLoader.loadSync(healthProtoPath, { enums: String })) as unknown as {
    grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => grpc.Client & { check: Function } } } };
  };
  const client = new def.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) =>
    client.check({ service }, { deadline: Date.now() + 2000 }, (err: Error | null, res: { status: string }) => {
      client.close();
      if (err) reject(err);
      else resolve(res.status);
    }),
  );
}

async function leaders(procs: Proc[]): Promise<Proc[]> {
  const out: Proc[] = [];
  for (const p of procs) if (p.alive && (await health(p.address, "noid.v1.Leader").catch(() => "")) === "SERVING") out.push(p);
  return out;
}

async function checkInvariants(prefix: string, capacity: { vcpus: number }): Promise<number> {
  const store = await createEtcdStore({ endpoints: etcd.endpoints, prefix });
  try {
    const hostsOf = new Map<string, number>();
    for (const kv of (await store.list("assign/")).kvs) {
      const vm = kv.key.split("/")[2]!;
      hostsOf.set(vm, (hostsOf.get(vm) ?? 0) + 1);
    }
    for (const [vm, n] of hostsOf) expect(n, `VM ${vm} on ${n} hosts`).toBe(1);
    for (const kv of (await store.list(keys.allocPrefix)).kvs) {
      expect(AllocationRecord.decode(kv.value).allocated?.vcpus ?? 0).toBeLessThanOrEqual(capacity.vcpus);
    }
    return hostsOf.size;
  } finally {
    await store.close();
  }
}

describe("coordinator replicas as processes", () => {
  it("SIGKILL of the leader during a stream of creates: another replica takes over and placements continue", async () => {
    const r = await startReplicas(3);
    const [leader] = await eventually(async () => {
      const l = await leaders(r.procs);
      return l.length === 1 ? l : undefined;
    }, 20_000, "one leader");
    const capacity = { vcpus: 64, memoryMb: 65536, diskGb: 1000 };
    const others = r.procs.filter((p) => p !== leader).map((p) => p.address);
    // The agent talks to the leader's replica first, so the kill also breaks its session.
    const agent = new SimAgent({ address: [leader!.address, ...others].join(","), token: r.token, name: "hp-a", capacity, autoRun: true });
    cleanups.push(() => agent.close());
    await agent.connect();
    const client = r.client();
    const created: string[] = [];
    let killedAt = 0;
    let failoverMs = 0;
    for (let i = 0; i < 30; i++) {
      if (i === 8) {
        killedAt = Date.now();
        leader!.child.kill("SIGKILL");
      }
      const vm = await client.createVm(`hp-${i}`, { vcpus: 1, memoryMb: 128, diskGb: 1 });
      created.push(vm.id);
      if (killedAt && !failoverMs) {
        const vms = await client.listVms().catch(() => []);
        if (vms.some((v) => created.indexOf(v.id) >= 8 && v.status?.hostId)) failoverMs = Date.now() - killedAt;
      }
    }
    await eventually(
      async () => {
        const vms = await client.listVms();
        return created.every((id) => vms.find((v) => v.id === id)?.status?.phase === VmPhase.VM_PHASE_RUNNING);
      },
      30_000,
      "every VM RUNNING",
    );
    if (!failoverMs) failoverMs = Date.now() - killedAt;
    console.log(`failover (SIGKILL, processes): leader killed -> next successful placement in ${failoverMs} ms (lease ${LEASE_SECONDS} s)`);
    expect(failoverMs).toBeLessThan(30_000);
    expect(await leaders(r.procs)).toHaveLength(1);
    expect(await checkInvariants(r.prefix, capacity)).toBe(created.length);
    expect(agent.reconnects).toBeGreaterThanOrEqual(1);
  }, 120_000);

  it("SIGSTOP of the leader past its lease, then SIGCONT: the other replica leads, the resumed one writes nothing", async () => {
    const r = await startReplicas(2);
    const [a] = await eventually(async () => {
      const l = await leaders(r.procs);
      return l.length === 1 ? l : undefined;
    }, 20_000, "one leader");
    const b = r.procs.find((p) => p !== a)!;
    const client = connect({ address: b.address, token: r.token, insecure: true, deadlineMs: 5000 });
    cleanups.push(() => client.close());
    // Pending VMs: no host yet, so the paused leader has work to resume with.
    for (let i = 0; i < 6; i++) await client.createVm(`s-${i}`, { vcpus: 2, memoryMb: 256, diskGb: 1 }).catch(() => undefined);
    a!.child.kill("SIGSTOP");
    await eventually(async () => (await health(b.address, "noid.v1.Leader").catch(() => "")) === "SERVING", 20_000, "B to lead");
    // Capacity for 3 of the 6 appears; then A wakes up with a stale view.
    const capacity = { vcpus: 6, memoryMb: 4096, diskGb: 100 };
    const agent = new SimAgent({ address: b.address, token: r.token, name: "hp-s", capacity, autoRun: true });
    cleanups.push(() => agent.close());
    await agent.connect();
    a!.child.kill("SIGCONT");
    await eventually(async () => (await client.listVms()).filter((v) => v.status?.hostId).length === 3, 20_000, "3 placed");
    await eventually(async () => (await health(a!.address, "noid.v1.Leader").catch(() => "")) === "NOT_SERVING", 10_000, "A not leader after resuming");
    await new Promise((res) => setTimeout(res, 1000));
    expect(await leaders(r.procs)).toEqual([b]);
    // The resumed replica noticed and stopped its controllers (why: its watchdog, the key, or a refused write).
    const stepDown = readFileSync(join(a!.dir, "coordinator.log"), "utf8")
      .split("\n")
      .filter((l) => l.includes("no longer leader"));
    console.log(`resumed leader: ${stepDown.map((l) => (JSON.parse(l) as { reason: string }).reason).join("; ")}`);
    expect(stepDown.length).toBeGreaterThanOrEqual(1);
    expect(await checkInvariants(r.prefix, capacity)).toBe(3);
  }, 90_000);
});
