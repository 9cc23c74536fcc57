// Tenant networks end to end: real gRPC, real etcd, a simulated agent, and a
// clock the test moves forward (for the address reuse grace).
import * as grpc from "@grpc/grpc-js";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { resolveConfig } from "../../coordinator/config.js";
import { startCoordinator, type CoordinatorHandle } from "../../coordinator/server.js";
import { NetworkServiceClient, type CreateNetworkRequest, type Network } from "../../gen/noid/v1/network.js";
import { connect, Role, NoidApiError, VmPhase, type NoidClient } from "../../sdk/index.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { eventually, quietRevision } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

describe("tenant networks", () => {
  let etcd: TestEtcd;
  let handle: CoordinatorHandle;
  let stateDir: string;
  let adminToken: string;
  let admin: NoidClient;
  let raw: NetworkServiceClient;
  let sim: SimAgent;
  let offsetMs = 0;
  const clients: NoidClient[] = [];
  const client = (token: string) => {
    const c = connect({ address: handle.address, token, insecure: true, deadlineMs: 10_000, retries: 1 });
    clients.push(c);
    return c;
  };
  const user = async (name: string) => client((await admin.createToken({ name, role: Role.ROLE_USER })).secret);

  /** CreateNetwork with every request field (the SDK's createNetwork sends name and cidr only). */
  const createNet = (token: string, req: Partial<CreateNetworkRequest>): Promise<Network> => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    const full: CreateNetworkRequest = { name: "", cidr: "", egress: undefined, mode: "", owner: "", ...req };
    return new Promise((resolve, reject) => raw.createNetwork(full, md, (err, res) => (err ? reject(err) : resolve(res!.network!))));
  };
  const codeOf = async (p: Promise<unknown>): Promise<grpc.status> =>
    p.then(
      () => grpc.status.OK,
      (e: grpc.ServiceError) => e.code,
    );

  beforeAll(async () => {
    etcd = await startTestEtcd();
    stateDir = mkdtempSync(join(tmpdir(), "noid-nets-"));
    const config = resolveConfig({
      server: { listen: "127.0.0.1:0", insecure: true },
      state_dir: stateDir,
      etcd: { endpoints: etcd.endpoints, prefix: `/n${Math.random().toString(16).slice(2, 8)}/` },
      logging: { level: "silent" },
      limits: { max_vms_per_user: 50, max_total_vms: 200 },
    });
    handle = await startCoordinator({ config, logger: silentLogger(), clock: { now: () => new Date(Date.now() + offsetMs) } });
    adminToken = (await import("node:fs")).readFileSync(handle.adminTokenFile, "utf8").trim();
    admin = client(adminToken);
    raw = new NetworkServiceClient(handle.address, grpc.credentials.createInsecure());
    sim = new SimAgent({ address: handle.address, token: adminToken, name: "net-host", autoRun: true, capacity: { vcpus: 256, memoryMb: 262_144, diskGb: 10_000 } });
    await sim.connect();
  });
  afterAll(async () => {
    sim?.close();
    raw?.close();
    clients.forEach((c) => c.close());
    await handle?.stop();
    await etcd?.stop();
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  it("creates networks per tenant: CIDRs may overlap across tenants, never within one", async () => {
    const alice = await user("alice");
    const bob = await user("bob");
    const a = await createNet(await tokenOf("alice"), { name: "backend", cidr: "10.20.0.0/24", mode: "vxlan", egress: { denyAll: false, allow: [], deny: ["169.254.0.0/16"] } });
    const b = await createNet(await tokenOf("bob"), { name: "backend", cidr: "10.20.0.0/24" });
    expect(a).toMatchObject({ name: "backend", owner: "alice", cidr: "10.20.0.0/24", gateway: "10.20.0.1", mode: "vxlan", ipsUsed: 0, ipsTotal: 253 });
    expect(a.egress?.deny).toEqual(["169.254.0.0/16"]);
    expect(b).toMatchObject({ owner: "bob", mode: "wireguard" });
    expect(a.vni).not.toBe(b.vni);
    expect(a.vni).toBeGreaterThanOrEqual(4096);
    expect(await alice.getNetwork("backend")).toMatchObject({ id: a.id, vni: a.vni });

    const overlap = await createNet(await tokenOf("alice"), { name: "wide", cidr: "10.20.0.0/16" }).catch((e: grpc.ServiceError) => e);
    expect((overlap as grpc.ServiceError).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((overlap as grpc.ServiceError).details).toMatch(/overlaps network "backend"/);
    expect(await codeOf(createNet(await tokenOf("alice"), { name: "backend", cidr: "10.30.0.0/24" }))).toBe(grpc.status.ALREADY_EXISTS);
    expect((await bob.listNetworks()).map((n) => n.name)).toEqual(["backend", "default"]);
  });

  // Tokens by user name, created once (the raw client needs the secret).
  const secrets = new Map<string, string>();
  async function tokenOf(name: string): Promise<string> {
    let s = secrets.get(name);
    if (!s) {
      s = (await admin.createToken({ name: `${name}-raw`, user: name, role: Role.ROLE_USER })).secret;
      secrets.set(name, s);
    }
    return s;
  }

  it("shows users only their own networks, admins any by owner, and creates the default on first list", async () => {
    const erin = await user("erin");
    const nets = await erin.listNetworks();
    expect(nets.map((n) => [n.name, n.cidr, n.gateway])).toEqual([["default", "10.0.0.0/24", "10.0.0.1"]]);
    expect((await erin.listNetworks()).map((n) => n.id)).toEqual(nets.map((n) => n.id)); // once
    expect((await failure(erin.getNetwork("backend", { owner: "alice" }))).code).toBe("PERMISSION_DENIED");
    expect((await failure(erin.listNetworks({ owner: "alice" }))).code).toBe("PERMISSION_DENIED");
    expect((await failure(erin.getNetwork("backend"))).code).toBe("NOT_FOUND");
    expect((await admin.listNetworks({ owner: "alice" })).map((n) => n.name)).toContain("backend");
    const all = await admin.listNetworks();
    expect(all.filter((n) => n.name === "backend").map((n) => n.owner).sort()).toEqual(["alice", "bob"]);
    expect(await codeOf(createNet(await tokenOf("erin"), { name: "x", cidr: "10.1.0.0/24", owner: "alice" }))).toBe(grpc.status.PERMISSION_DENIED);
    const forAlice = await createNet(adminToken, { name: "ops", cidr: "10.21.0.0/24", owner: "alice" });
    expect(forAlice.owner).toBe("alice");
  });

  it("rejects bad input naming the field and writes nothing", async () => {
    const t = await tokenOf("frank");
    const frank = await user("frank");
    const before = await quietRevision(handle); // earlier tests' events land up to 100 ms late
    for (const [req, code, why] of [
      [{ name: "n1", cidr: "8.8.8.0/24" }, grpc.status.INVALID_ARGUMENT, /cidr: .*not a private range/],
      [{ name: "n1", cidr: "10.0.0.0/30" }, grpc.status.INVALID_ARGUMENT, /too small/],
      [{ name: "n1", cidr: "10.0.0.0/12" }, grpc.status.INVALID_ARGUMENT, /too large/],
      [{ name: "n1", cidr: "10.0.0.1/24" }, grpc.status.INVALID_ARGUMENT, /host bits/],
      [{ name: "Bad_Name", cidr: "10.0.0.0/24" }, grpc.status.INVALID_ARGUMENT, /name/],
      [{ name: "isolated", cidr: "10.0.0.0/24" }, grpc.status.INVALID_ARGUMENT, /reserved/],
      [{ name: "n1", cidr: "10.0.0.0/24", mode: "gre" }, grpc.status.INVALID_ARGUMENT, /mode/],
      [{ name: "n1", cidr: "10.0.0.0/24", egress: { denyAll: true, allow: ["1.1.1.1/32"], deny: [] } }, grpc.status.INVALID_ARGUMENT, /deny_all/],
    ] as const) {
      const e = (await createNet(t, req as Parameters<typeof createNet>[1]).catch((x: grpc.ServiceError) => x)) as grpc.ServiceError;
      expect(e.code).toBe(code);
      expect(e.details).toMatch(why);
    }
    const vm = await failure(frank.createVm("v1", { network: "nope" }));
    expect(vm.code).toBe("INVALID_ARGUMENT");
    expect(vm.message).toMatch(/spec\.network.*"nope"/);
    expect((await failure(frank.deleteNetwork("nope"))).code).toBe("NOT_FOUND");
    expect(await handle.store.revision()).toBe(before);
  });

  it("hands out distinct VNIs under concurrent creates", async () => {
    const made = await Promise.all(Array.from({ length: 20 }, (_, i) => createNet(adminToken, { name: "par", cidr: "10.50.0.0/24", owner: `tenant-${i}` })));
    expect(new Set(made.map((n) => n.vni)).size).toBe(20);
    // One tenant racing itself: distinct CIDRs all succeed, overlapping ones only once.
    const mine = await Promise.all(Array.from({ length: 8 }, (_, i) => createNet(adminToken, { name: `m${i}`, cidr: `10.60.${i}.0/24`, owner: "gina" })));
    expect(new Set([...made, ...mine].map((n) => n.vni)).size).toBe(28);
    const racing = await Promise.all(Array.from({ length: 6 }, (_, i) => codeOf(createNet(adminToken, { name: `o${i}`, cidr: "10.70.0.0/24", owner: "gina" }))));
    expect(racing.filter((c) => c === grpc.status.OK).length).toBe(1);
    expect(racing.filter((c) => c !== grpc.status.OK).every((c) => c === grpc.status.INVALID_ARGUMENT)).toBe(true);
  });

  it("gives VMs distinct addresses and MACs from their network, shown by getVm", async () => {
    const hank = await user("hank");
    await createNet(await tokenOf("hank"), { name: "db", cidr: "172.16.8.0/29" });
    const vms = await Promise.all(Array.from({ length: 6 }, (_, i) => hank.createVm(`w${i}`, { vcpus: 1, memoryMb: 64 })));
    const dbVm = await hank.createVm("pg", { vcpus: 1, memoryMb: 64, network: "db" });
    const iso = await hank.createVm("lonely", { vcpus: 1, memoryMb: 64, network: "isolated" });
    const def = await hank.getNetwork("default");
    const shown = await Promise.all([...vms, iso].map((v) => hank.getVm(v.name)));
    const ips = shown.map((v) => v.status!.ip);
    expect(new Set(ips).size).toBe(7);
    for (const v of shown) {
      expect(v.status).toMatchObject({ networkId: def.id, networkCidr: "10.0.0.0/24", gateway: "10.0.0.1" });
      expect(v.status!.ip).toMatch(/^10\.0\.0\.(\d+)$/);
      expect(["10.0.0.0", "10.0.0.1", "10.0.0.255"]).not.toContain(v.status!.ip);
      expect(v.status!.mac).toMatch(/^02(:[0-9a-f]{2}){5}$/);
    }
    expect(new Set(shown.map((v) => v.status!.mac)).size).toBe(7);
    expect((await hank.getVm("pg")).status).toMatchObject({ ip: "172.16.8.2", networkCidr: "172.16.8.0/29", gateway: "172.16.8.1", networkId: expect.any(String) });
    expect(dbVm.status?.ip).toBe("172.16.8.2");
    expect((await hank.getNetwork("default")).ipsUsed).toBe(7);
    // Running VMs keep their address: the agent's report does not move it.
    await eventually(async () => (await hank.getVm("pg")).status?.phase === VmPhase.VM_PHASE_RUNNING);
    expect((await hank.getVm("pg")).status?.ip).toBe("172.16.8.2");
  });

  it("releases a destroyed VM's address, not reusing it within the grace period, and refuses deleting a network in use", async () => {
    const ivy = await user("ivy");
    await createNet(await tokenOf("ivy"), { name: "tiny", cidr: "192.168.9.0/29" }); // .2 .. .6
    for (let i = 0; i < 5; i++) await ivy.createVm(`t${i}`, { vcpus: 1, memoryMb: 64, network: "tiny" });
    const full = await failure(ivy.createVm("t5", { vcpus: 1, memoryMb: 64, network: "tiny" }));
    expect(full.code).toBe("RESOURCE_EXHAUSTED");
    expect(full.message).toMatch(/network is full: 5 of 5/);
    const del = await failure(ivy.deleteNetwork("tiny"));
    expect(del.code).toBe("FAILED_PRECONDITION");
    expect(del.message).toMatch(/in use by 5 VMs/);

    const gone = await ivy.getVm("t2");
    await ivy.destroyVm("t2");
    await eventually(async () => !(await ivy.listVms()).some((v) => v.name === "t2"), 10_000, "t2 removed");
    expect((await ivy.getNetwork("tiny")).ipsUsed).toBe(4);
    const cooling = await failure(ivy.createVm("t5", { vcpus: 1, memoryMb: 64, network: "tiny" }));
    expect(cooling.code).toBe("RESOURCE_EXHAUSTED");
    expect(cooling.message).toMatch(/reuse grace/);

    offsetMs += 301_000; // past ip_reuse_grace_seconds (300)
    const again = await ivy.createVm("t5", { vcpus: 1, memoryMb: 64, network: "tiny" });
    expect(again.status?.ip).toBe(gone.status?.ip);
    expect(again.status?.mac).not.toBe(gone.status?.mac);

    for (const v of await ivy.listVms()) await ivy.destroyVm({ id: v.id });
    await eventually(async () => (await ivy.listVms()).length === 0, 10_000, "ivy's VMs removed");
    expect((await failure(ivy.deleteNetwork("default"))).code).toBe("NOT_FOUND"); // never used: never created
    await ivy.deleteNetwork("tiny");
    expect((await failure(ivy.getNetwork("tiny"))).code).toBe("NOT_FOUND");
    const events = await admin.listAuditEvents({ user: "ivy" });
    expect(events.map((e) => e.event)).toEqual(expect.arrayContaining(["network.create", "network.delete"]));
    // The name and range are free again.
    expect((await createNet(await tokenOf("ivy"), { name: "tiny", cidr: "192.168.9.0/29" })).ipsUsed).toBe(0);
  });

  it("refuses deleting a default network while VMs use it, and allows it once they are gone", async () => {
    const jon = await user("jon");
    await jon.createVm("j1", { vcpus: 1, memoryMb: 64, network: "isolated" });
    const e = await failure(jon.deleteNetwork("default"));
    expect(e.code).toBe("FAILED_PRECONDITION");
    await jon.destroyVm("j1");
    await eventually(async () => (await jon.listVms()).length === 0, 10_000, "j1 removed");
    await jon.deleteNetwork("default");
    const admins = await admin.listNetworks({ owner: "jon" });
    expect(admins).toEqual([]);
  });
});

describe("mesh distribution", () => {
  it("sends each host the live hosts and the tenant networks it carries, and updates them", async () => {
    const { startTestCoordinator, eventually } = await import("../helpers/coordinator.js");
    const { SimAgent } = await import("../helpers/sim-agent.js");
    const c = await startTestCoordinator();
    const agents = [1, 2].map((i) => new SimAgent({ address: c.address, token: c.adminToken, name: `m${i}`, autoRun: true, wireguardPublicKey: `key${i}` }));
    try {
      for (const a of agents) await a.connect();
      const admin = c.client();
      await admin.createVm("x1", { vcpus: 1, memoryMb: 64, host: "m1" });
      await admin.createVm("x2", { vcpus: 1, memoryMb: 64, host: "m2" });
      const [a1, a2] = agents as [InstanceType<typeof SimAgent>, InstanceType<typeof SimAgent>];
      await eventually(() => a1.mesh?.members.every((m) => m.networks.length === 1) && a1.mesh.members.length === 2, 10_000, "m1 mesh");
      const ips = new Set(a1.mesh!.members.map((m) => m.meshIp));
      expect(ips.size).toBe(2); // distinct mesh addresses
      const remote = a1.mesh!.members.find((m) => m.name === "m2")!;
      expect(remote.wireguardPublicKey).toBe("key2");
      expect(remote.networks[0]!.vms.map((v) => v.vmId)).toEqual([(await admin.getVm("x2")).id]);
      // The last VM of the network leaves host m2: m1 no longer sees the network there.
      await admin.destroyVm("x2");
      await eventually(() => a1.mesh?.members.find((m) => m.name === "m2")?.networks.length === 0, 10_000, "m2's network gone from m1's view");
      await eventually(() => a2.mesh?.members.every((m) => m.networks.length === 0), 10_000, "m2 carries nothing");
    } finally {
      agents.forEach((a) => a.close());
      await c.stop();
    }
  });
});
