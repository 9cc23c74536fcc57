// The coordinator end to end through the SDK: real gRPC, real etcd.
import * as grpc from "@grpc/grpc-js";
import { statSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, VmPhase, type NoidClient, NoidApiError } from "../../sdk/index.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, quietRevision, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

describe("coordinator API", () => {
  let c: TestCluster;
  let admin: NoidClient;
  const agents: SimAgent[] = [];
  const agent = async (name: string, o: Partial<ConstructorParameters<typeof SimAgent>[0]> = {}) => {
    const a = new SimAgent({ address: c.address, token: c.adminToken, name, autoRun: true, ...o });
    agents.push(a);
    await a.connect();
    return a;
  };

  beforeAll(async () => {
    c = await startTestCoordinator({ limits: { max_vms_per_user: 6, max_total_vms: 9, max_vcpus_per_vm: 4, max_memory_per_vm: 4096 } });
    admin = c.client();
  });
  afterAll(async () => {
    agents.forEach((a) => a.close());
    await c?.stop();
  });

  it("writes a bootstrap admin token to a 0600 file and knows who is asking", async () => {
    expect(statSync(c.handle.adminTokenFile).mode & 0o777).toBe(0o600);
    const me = await admin.whoAmI();
    expect(me.user).toBe("admin");
    expect(me.role).toBe(Role.ROLE_ADMIN);
    const anon = c.client("0".repeat(64));
    expect((await failure(anon.listVms())).code).toBe("UNAUTHENTICATED");
  });

  it("keeps a VM PENDING with RESOURCE_EXHAUSTED when no host fits, and places it when a host joins", async () => {
    const e = await failure(admin.createVm("early", { vcpus: 1, memoryMb: 256 }));
    expect(e.code).toBe("RESOURCE_EXHAUSTED");
    expect(e.message).toMatch(/kept PENDING/);
    const vm = await admin.getVm("early");
    expect(vm.status?.phase).toBe(VmPhase.VM_PHASE_PENDING);
    const a = await agent("host-a");
    const running = await eventually(async () => {
      const v = await admin.getVm("early");
      return v.status?.phase === VmPhase.VM_PHASE_RUNNING ? v : undefined;
    });
    expect(running.status?.hostName).toBe("host-a");
    expect(a.vms.has(running.id)).toBe(true);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field and writes nothing", async () => {
    const before = await quietRevision(c.handle); // earlier tests' events land up to 100 ms late
    for (const [name, spec, field] of [
      ["Bad_Name", {}, "name"],
      ["", {}, "name"],
      ["x".repeat(64), {}, "name"],
      ["ok-name", { driver: "vmware" }, "spec.driver"],
      ["ok-name", { memoryMb: 1 }, "spec.memory_mb"],
      ["ok-name", { labels: { "bad key!": "v" } }, "spec.labels"],
    ] as const) {
      const err = await failure(admin.createVm(name, spec));
      expect(err.code).toBe("INVALID_ARGUMENT");
      expect(err.message).toContain(field);
    }
    expect((await failure(admin.createToken({ name: "t1", role: 42 as Role }))).code).toBe("INVALID_ARGUMENT");
    expect(await c.handle.store.revision()).toBe(before);
  });

  it("refuses a duplicate name with ALREADY_EXISTS", async () => {
    await admin.createVm("dup", { vcpus: 1, memoryMb: 128 });
    expect((await failure(admin.createVm("dup", { vcpus: 1, memoryMb: 128 }))).code).toBe("ALREADY_EXISTS");
  });

  it("enforces per-VM limits with RESOURCE_EXHAUSTED naming the limit", async () => {
    const cpu = await failure(admin.createVm("big", { vcpus: 5 }));
    expect(cpu.code).toBe("RESOURCE_EXHAUSTED");
    expect(cpu.message).toContain("max_vcpus_per_vm");
    const mem = await failure(admin.createVm("big", { memoryMb: 8192 }));
    expect(mem.message).toContain("max_memory_per_vm");
  });

  it("gives each user only their own VMs, and roles decide what they may do", async () => {
    const alice = c.client((await admin.createToken({ name: "alice", role: Role.ROLE_USER })).secret);
    const bob = c.client((await admin.createToken({ name: "bob", role: Role.ROLE_USER })).secret);
    const viewer = c.client((await admin.createToken({ name: "viewer", role: Role.ROLE_READ_ONLY })).secret);
    await alice.createVm("web", { vcpus: 1, memoryMb: 128 });
    await bob.createVm("web", { vcpus: 1, memoryMb: 128 }); // names are unique per owner, not globally
    expect((await alice.listVms()).map((v) => `${v.owner}/${v.name}`)).toEqual(["alice/web"]);
    expect((await failure(alice.getVm("web", { owner: "bob" }))).code).toBe("PERMISSION_DENIED");
    const bobsVm = await bob.getVm("web");
    expect((await failure(alice.destroyVm({ id: bobsVm.id }))).code).toBe("NOT_FOUND");
    expect((await failure(viewer.createVm("nope"))).code).toBe("PERMISSION_DENIED");
    expect((await viewer.listVms()).length).toBe(0);
    expect((await failure(alice.createToken({ name: "mallory", role: Role.ROLE_ADMIN }))).code).toBe("PERMISSION_DENIED");
    expect((await failure(alice.cordonHost("host-a"))).code).toBe("PERMISSION_DENIED");
    const all = await admin.listVms();
    expect(all.filter((v) => v.name === "web").map((v) => v.owner).sort()).toEqual(["alice", "bob"]);
  });

  it("enforces max_vms_per_user atomically under concurrent creates", async () => {
    await agent("host-big", { capacity: { vcpus: 64, memoryMb: 65536, diskGb: 1000 } });
    const carol = c.client((await admin.createToken({ name: "carol", role: Role.ROLE_USER })).secret);
    const results = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => carol.createVm(`c${i}`, { vcpus: 1, memoryMb: 64 })));
    const ok = results.filter((r) => r.status === "fulfilled").length;
    const rejected = results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason as NoidApiError);
    // max_total_vms (9) bites before max_vms_per_user (6) only if others hold enough; either way the sum is bounded.
    expect(ok).toBeLessThanOrEqual(6);
    expect(rejected.filter((e) => !(e.code === "RESOURCE_EXHAUSTED" && /max_(vms_per_user|total_vms)/.test(e.message))).map((e) => e.message)).toEqual([]);
    expect((await carol.listVms()).length).toBe(ok);
    expect((await admin.listVms()).length).toBeLessThanOrEqual(9);
  });

  it("destroys a placed VM through its agent and frees its capacity", async () => {
    const vms = await admin.listVms();
    for (const v of vms) await admin.destroyVm({ id: v.id });
    await eventually(async () => (await admin.listVms()).length === 0, 10_000, "all VMs gone");
    const host = await admin.getHost("host-a");
    expect(host.allocated?.vcpus).toBe(0);
    expect(host.vmCount).toBe(0);
  });

  it("never over-commits a host and leaves the rest PENDING until capacity appears", async () => {
    const small = await agent("host-small", { capacity: { vcpus: 2, memoryMb: 1024, diskGb: 10 } });
    await admin.cordonHost("host-a");
    await admin.cordonHost("host-big");
    const made: string[] = [];
    for (let i = 0; i < 4; i++) {
      made.push(await admin.createVm(`p${i}`, { vcpus: 1, memoryMb: 128 }).then(() => "OK", (e: NoidApiError) => e.code));
    }
    // The first two fit host-small; the rest are told there is no room now, and kept.
    expect(made).toEqual(["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]);
    expect((await admin.listVms()).length).toBe(4);
    await eventually(async () => (await admin.listVms()).filter((v) => v.status?.hostName === "host-small").length === 2);
    const h = await admin.getHost("host-small");
    expect(h.allocated?.vcpus).toBe(2);
    const pending = (await admin.listVms()).filter((v) => !v.status?.hostName);
    expect(pending.length).toBe(2);
    expect(pending[0]!.status?.reason).toMatch(/cordoned/);
    await admin.uncordonHost("host-a");
    await eventually(async () => (await admin.listVms()).every((v) => v.status?.phase === VmPhase.VM_PHASE_RUNNING), 10_000, "all running");
    expect(small.vms.size).toBe(2);
  });

  it("streams VM changes to watchers", async () => {
    const ac = new AbortController();
    const seen: string[] = [];
    const done = (async () => {
      for await (const ev of admin.watchVms({ signal: ac.signal })) {
        if (ev.vm?.name === "watched") seen.push(String(ev.vm.status?.phase));
        if (ev.vm?.name === "watched" && ev.vm.status?.phase === VmPhase.VM_PHASE_RUNNING) break;
      }
    })();
    await new Promise((r) => setTimeout(r, 200));
    await admin.createVm("watched", { vcpus: 1, memoryMb: 64 });
    await done;
    ac.abort();
    expect(seen[0]).toBe(String(VmPhase.VM_PHASE_PENDING));
    expect(seen.at(-1)).toBe(String(VmPhase.VM_PHASE_RUNNING));
  });

  it("serves grpc.health.v1 and server reflection", async () => {
    const { HealthClient } = await loadHealth();
    const h = new HealthClient(c.address, grpc.credentials.createInsecure());
    const res = await new Promise<{ status: string }>((resolve, reject) => h.check({ service: "" }, (e: Error | null, r: { status: string }) => (e ? reject(e) : resolve(r))));
    expect(res.status).toBe("SERVING");
    h.close();
    const services = await listServicesByReflection(c.address);
    expect(services).toEqual(expect.arrayContaining(["noid.v1.VmService", "noid.v1.HostService", "noid.v1.AgentService", "grpc.health.v1.Health"]));
  });

  it("answers an unknown host session with NOT_FOUND and an agent-only API to non-admins with PERMISSION_DENIED", async () => {
    const alice = (await admin.listTokens()).find((t) => t.name === "alice");
    expect(alice).toBeDefined();
    const rogue = new SimAgent({ address: c.address, token: c.adminToken, name: "ghost" });
    rogue.hostId = "00000000000000ff";
    await expect(rogue.connect()).rejects.toMatchObject({ code: grpc.status.NOT_FOUND });
    rogue.close();
  });
});

async function loadHealth(): Promise<{ HealthClient: new (addr: string, creds: grpc.ChannelCredentials) => any }> {
  const protoLoader = await import("@grpc/proto-loader");
  const { protoPath } = await import("grpc-health-check");
  const def = protoLoader.loadSync(protoPath, { enums: String });
  const pkg = grpc.loadPackageDefinition(def) as any;
  return { HealthClient: pkg.grpc.health.v1.Health };
}

async function listServicesByReflection(address: string): Promise<string[]> {
  const protoLoader = await import("@grpc/proto-loader");
  const { createRequire } = await import("node:module");
  const require = createRequire(import.meta.url);
  const path = require.resolve("@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto");
  const pkg = grpc.loadPackageDefinition(protoLoader.loadSync(path)) as any;
  const client = new pkg.grpc.reflection.v1.ServerReflection(address, grpc.credentials.createInsecure());
  const call = client.serverReflectionInfo();
  const names = await new Promise<string[]>((resolve, reject) => {
    call.on("data", (r: any) => {
      resolve((r.listServicesResponse?.service ?? []).map((s: any) => s.name));
      call.end();
    });
    call.on("error", reject);
    call.write({ listServices: "" });
  });
  client.close();
  return names;
}
