// Port exposure records in real etcd: one transaction per change, so a taken host port, a
// taken hostname or the per-user limit refuse without writing anything; concurrent exposes
// of one host port leave exactly one winner; a VM's removal releases everything it held.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NoidError } from "../../common/errors.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import { VmRepo, newVmId } from "../../coordinator/state/vm-repo.js";
import { PortRepo } from "../../coordinator/ports/port-repo.js";
import { keys, portKeys } from "../../coordinator/state/keys.js";
import { dec, enc } from "../../coordinator/state/codec.js";
import { auditKey } from "../../coordinator/audit-log.js";
import { PortCountRecord } from "../../gen/noid/v1/port.js";
import { Vm, VmPhase, VmSpec } from "../../gen/noid/v1/vm.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { ClusterState } from "../../coordinator/state/cluster.js";
import { HostRepo } from "../../coordinator/state/host-repo.js";
import { PortFeed } from "../../coordinator/ports/port-feed.js";
import { Host } from "../../gen/noid/v1/host.js";
import { silentLogger } from "../../common/logger.js";

let etcd: TestEtcd;
let store: EtcdStore;
let vms: VmRepo;
let ports: PortRepo;
const clock = { now: () => new Date() };
const limits = { max_vms_per_user: 50, max_total_vms: 100, max_vcpus_per_vm: 4, max_memory_per_vm: 4096, max_disk_per_vm: 10, max_exposed_ports_per_user: 3 };
const actor = { user: "alice", peer: "test" };
const none = () => undefined;

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/noid-ports-${Date.now()}/` });
  ports = new PortRepo({ store, clock, auditKey });
  vms = new VmRepo({ store, clock, newId: newVmId, auditKey, ports });
});
afterAll(async () => {
  store?.close();
  await etcd?.stop();
});

/** A VM placed on `hostId` (as the scheduler and the agent would leave it). */
async function placed(owner: string, name: string, hostId = "h1"): Promise<Vm> {
  const { vm } = await vms.create(owner, name, VmSpec.fromPartial({ vcpus: 1, memoryMb: 64, diskGb: 1 }), limits, { peer: "test" });
  const next: Vm = { ...vm, status: { ...vm.status!, hostId, hostName: "host1", ip: "10.0.0.5/24", phase: VmPhase.VM_PHASE_RUNNING } };
  await store.put(keys.vm(vm.id), enc(Vm, next));
  return next;
}

async function refusal(f: () => Promise<unknown>): Promise<string> {
  const before = await store.revision();
  try {
    await f();
    return "OK";
  } catch (e) {
    expect(await store.revision(), "a refused request wrote something").toBe(before);
    return e instanceof NoidError ? e.code : String(e);
  }
}

const count = async (user: string) => {
  const kv = await store.get(portKeys.count(user));
  return kv ? dec(PortCountRecord, kv.value).count : 0;
};

describe("port records", () => {
  it("takes a host port once per host and protocol; refusals write nothing", async () => {
    const web = await placed("alice", "web");
    const api = await placed("bob", "api");
    const other = await placed("bob", "far", "h2");
    await ports.expose(web, { hostPort: 8080, vmPort: 80, protocol: "tcp" }, limits, actor, none);
    expect(await refusal(() => ports.expose(api, { hostPort: 8080, vmPort: 80, protocol: "tcp" }, limits, actor, none))).toBe("ALREADY_EXISTS");
    expect(await refusal(() => ports.expose(api, { hostPort: 8080, vmPort: 80, protocol: "udp" }, limits, actor, none))).toBe("OK");
    expect(await refusal(() => ports.expose(other, { hostPort: 8080, vmPort: 80, protocol: "tcp" }, limits, actor, none))).toBe("OK"); // another host
    expect(await refusal(() => ports.expose(web, { hostPort: 51820, vmPort: 80, protocol: "udp" }, limits, actor, () => "the host's WireGuard port"))).toBe("ALREADY_EXISTS");
    expect(await count("alice")).toBe(1);
    expect(await count("bob")).toBe(2);
  });

  it("enforces the per-user limit (ports and routes together)", async () => {
    const vm = await placed("carol", "lim");
    await ports.expose(vm, { hostPort: 9001, vmPort: 80, protocol: "tcp" }, limits, { ...actor, user: "carol" }, none);
    await ports.exposeHttp(vm, "lim.example.test", 80, limits, { ...actor, user: "carol" });
    await ports.expose(vm, { hostPort: 9002, vmPort: 80, protocol: "tcp" }, limits, { ...actor, user: "carol" }, none);
    expect(await refusal(() => ports.expose(vm, { hostPort: 9003, vmPort: 80, protocol: "tcp" }, limits, actor, none))).toBe("RESOURCE_EXHAUSTED");
    expect(await refusal(() => ports.exposeHttp(vm, "lim2.example.test", 80, limits, actor))).toBe("RESOURCE_EXHAUSTED");
    await ports.unexpose(vm, 9002, "tcp", actor);
    expect(await count("carol")).toBe(2);
    expect(await refusal(() => ports.expose(vm, { hostPort: 9003, vmPort: 80, protocol: "tcp" }, limits, actor, none))).toBe("OK");
  });

  it("lets exactly one of many concurrent exposes of one host port win", async () => {
    const list = await Promise.all(Array.from({ length: 8 }, (_, i) => placed("dave", `race${i}`)));
    const r = await Promise.allSettled(list.map((vm) => ports.expose(vm, { hostPort: 7777, vmPort: 80, protocol: "tcp" }, limits, actor, none)));
    expect(r.filter((x) => x.status === "fulfilled")).toHaveLength(1);
    expect(r.filter((x) => x.status === "rejected").map((x) => ((x as PromiseRejectedResult).reason as NoidError).code)).toEqual(Array(7).fill("ALREADY_EXISTS"));
    expect(await count("dave")).toBe(1);
  });

  it("keeps hostnames unique and gives each route its own mesh port on the VM's host", async () => {
    const a = await placed("erin", "a");
    const b = await placed("frank", "b");
    const ra = await ports.exposeHttp(a, "shop.example.test", 8000, limits, actor);
    expect(await refusal(() => ports.exposeHttp(b, "shop.example.test", 80, limits, actor))).toBe("ALREADY_EXISTS");
    const rb = await ports.exposeHttp(b, "blog.example.test", 80, limits, actor);
    expect(rb.meshPort).not.toBe(ra.meshPort);
    expect(await refusal(() => ports.unexposeHttp(b, "shop.example.test", actor))).toBe("NOT_FOUND"); // not b's route
    await ports.unexposeHttp(a, "shop.example.test", actor);
    expect(await store.get(portKeys.meshPort("h1", ra.meshPort))).toBeUndefined();
    expect(await store.get(portKeys.route("shop.example.test"))).toBeUndefined();
  });

  it("releases a VM's ports, routes and count with the VM", async () => {
    const vm = await placed("gina", "gone");
    await ports.expose(vm, { hostPort: 6060, vmPort: 80, protocol: "tcp" }, limits, actor, none);
    const r = await ports.exposeHttp(vm, "gone.example.test", 80, limits, actor);
    expect(await count("gina")).toBe(2);
    await vms.requestDestroy(vm.id, "gina", "test");
    await vms.finalizeDestroy(vm.id, "h1");
    expect(await store.get(keys.vm(vm.id))).toBeUndefined();
    for (const k of [portKeys.port("h1", "tcp", 6060), portKeys.route("gone.example.test"), portKeys.meshPort("h1", r.meshPort), portKeys.vmPorts(vm.id)]) {
      expect(await store.get(k), k).toBeUndefined();
    }
    expect(await count("gina")).toBe(0);
  });
  it("every session's route upstream follows the mesh address of the route's host; a cordon rebuilds nothing", async () => {
    const cluster = new ClusterState(store, silentLogger());
    await cluster.start();
    const feed = new PortFeed({ store, cluster, hosts: new HostRepo(store, clock), logger: silentLogger(), clock });
    await feed.start();
    try {
      const host = Host.fromPartial({ id: "h9", name: "host9", address: "10.99.0.9", meshIp: "100.64.0.9" });
      const write = async (h: Host) => {
        const revision = await store.put(keys.host(h.id), enc(Host, h));
        await cluster.hosts.waitFor(revision);
      };
      await write(host);
      const vm = await placed("hank", "web", "h9");
      const r = await ports.exposeHttp(vm, "hank.example.test", 80, limits, actor);
      await feed.routes.waitFor(await store.revision());
      const upstream = () => feed.snapshotFor("h1").routes.find((x) => x.hostname === "hank.example.test")?.upstream;
      expect(upstream()).toBe(`100.64.0.9:${r.meshPort}`);
      let calls = 0;
      const off = feed.onChange(() => calls++);
      await write({ ...host, cordoned: true, labels: { zone: "b" } });
      expect(calls, "a cordon or label change is not a port change").toBe(0);
      await write({ ...host, cordoned: true, meshIp: "100.64.0.19" });
      expect(calls).toBe(1);
      expect(upstream()).toBe(`100.64.0.19:${r.meshPort}`);
      off();
    } finally {
      await feed.stop();
      await cluster.stop();
    }
  });
});
