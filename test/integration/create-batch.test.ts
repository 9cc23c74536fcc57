// The CreateVm group commit on a real etcd: many clients create at once on two
// coordinators' repositories (as two replicas would: own etcd clients, own
// queues, own caches, racing on the same counters), some names asked twice,
// limits and a small network running out, destroys on one replica while the
// other creates. Whatever wins, no name, address or MAC is given twice, the
// limits hold, the counters equal what exists, every acknowledged VM exists
// exactly once (and nothing else does), every refusal is its own, and the
// audit chain verifies. The queued creates go in far fewer transactions than
// there are VMs.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { NoidError } from "../../common/errors.js";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { IpamStateRecord, QuotaRecord } from "../../gen/noid/v1/records.js";
import { Vm } from "../../gen/noid/v1/vm.js";
import { AuditLog, auditKey } from "../../coordinator/audit-log.js";
import { AuditChainStore } from "../../coordinator/auth/audit-chain-store.js";
import { NetworkRepo } from "../../coordinator/networks/network-repo.js";
import { networkSettings } from "../../coordinator/networks/settings.js";
import { validateCreate } from "../../coordinator/networks/validate.js";
import { VmNetworks } from "../../coordinator/networks/vm-network.js";
import { Informer } from "../../coordinator/state/informer.js";
import { InformerNameIndex } from "../../coordinator/state/name-index.js";
import { VmRepo, newVmId, type StoredVm } from "../../coordinator/state/vm-repo.js";
import { keys, netKeys } from "../../coordinator/state/keys.js";
import { dec } from "../../coordinator/state/codec.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import type { Store } from "../../coordinator/store/store.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import type { Limits } from "../../coordinator/limits.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";
import { countingStore } from "../helpers/counting-store.js";

let etcd: TestEtcd;
const raw: EtcdStore[] = [];
const clock = { now: () => new Date() };
const limits: Limits = { max_vms_per_user: 30, max_total_vms: 70, max_vcpus_per_vm: 4, max_memory_per_vm: 16384, max_disk_per_vm: 512, max_exposed_ports_per_user: 10 };

beforeAll(async () => {
  etcd = await startTestEtcd();
});
afterAll(async () => {
  for (const s of raw) await s.close().catch(() => undefined);
  await etcd?.stop();
});

interface Replica {
  informer: Informer<Vm> | undefined;
  store: Store;
  repo: VmRepo;
  networks: NetworkRepo;
  stop(): Promise<void>;
}

/** One coordinator's view of the cluster: its own etcd client, chain store, repositories and queue. */
async function replica(prefix: string, withInformer: boolean, wrap: (s: Store) => Store = (s) => s): Promise<Replica> {
  const r = await createEtcdStore({ endpoints: etcd.endpoints, prefix });
  raw.push(r);
  const store = wrap(new AuditChainStore(r));
  const networks = new NetworkRepo({ store, clock, settings: networkSettings({ ip_reuse_grace_seconds: 300 }), auditKey });
  const network = new VmNetworks({ store, clock, repo: networks, graceSeconds: 300 });
  let informer: Informer<Vm> | undefined;
  let names: InformerNameIndex | undefined;
  if (withInformer) {
    informer = new Informer(store, keys.vmsPrefix, (b) => dec(Vm, b), silentLogger());
    await informer.start();
    names = new InformerNameIndex(informer);
  }
  const repo = new VmRepo({ store, clock, newId: newVmId, auditKey, network, ...(names ? { names } : {}) });
  // As the coordinator wires it: VMs created elsewhere or removed make the creates' cached view stale.
  const off = informer?.onChange((c) => repo.noteVmChange(c));
  return {
    informer,
    store,
    repo,
    networks,
    stop: async () => {
      off?.();
      names?.stop();
      await informer?.stop();
    },
  };
}

type Outcome = { ok: true; owner: string; name: string; vm: StoredVm } | { ok: false; owner: string; name: string; code: string; message: string };

async function attempt(r: Replica, owner: string, name: string, opts: { network?: string; vcpus?: number } = {}): Promise<Outcome> {
  const spec = { ...normalizeVmSpec(undefined), network: opts.network ?? "", vcpus: opts.vcpus ?? 1 };
  try {
    return { ok: true, owner, name, vm: await r.repo.create(owner, name, spec, limits, { peer: "test" }) };
  } catch (e) {
    if (!(e instanceof NoidError)) throw e;
    return { ok: false, owner, name, code: e.code, message: e.message };
  }
}

/** Every invariant the group commit must keep, checked against what etcd holds. */
async function checkStore(store: Store, acked: Map<string, Vm>): Promise<void> {
  const vms = (await store.list(keys.vmsPrefix)).kvs.map((kv) => dec(Vm, kv.value));
  // Every acknowledged (and not destroyed) VM exists exactly once, and nothing else does.
  expect(vms.map((v) => v.id).sort()).toEqual([...acked.keys()].sort());
  for (const v of vms) expect(v).toEqual(acked.get(v.id));
  const names = vms.map((v) => `${v.owner}/${v.name}`);
  expect(new Set(names).size).toBe(names.length);
  for (const v of vms) {
    expect(Buffer.from((await store.get(keys.vmName(v.owner, v.name)))!.value).toString()).toBe(v.id);
    expect(Buffer.from((await store.get(netKeys.ipam(v.status!.networkId, v.status!.ip)))!.value).toString()).toBe(v.id);
    expect(Buffer.from((await store.get(netKeys.mac(v.status!.mac)))!.value).toString()).toBe(v.id);
  }
  expect((await store.list("names/")).kvs.length).toBe(vms.length);
  expect((await store.list("macs/")).kvs.length).toBe(vms.length);
  const ips = vms.map((v) => `${v.status!.networkId} ${v.status!.ip}`);
  expect(new Set(ips).size).toBe(ips.length);
  expect((await store.list("ipam/")).kvs.length).toBe(vms.length);
  // Counters equal what exists, and within the limits.
  const owners = [...new Set(vms.map((v) => v.owner))];
  for (const o of owners) {
    const mine = vms.filter((v) => v.owner === o);
    const kv = await store.get(keys.quota(o));
    const q = dec(QuotaRecord, kv!.value);
    expect(q).toEqual({ vms: mine.length, vcpus: mine.reduce((s, v) => s + v.spec!.vcpus, 0), memoryMb: mine.reduce((s, v) => s + v.spec!.memoryMb, 0) });
    expect(q.vms).toBeLessThanOrEqual(limits.max_vms_per_user);
  }
  const total = dec(QuotaRecord, (await store.get(keys.total))!.value);
  expect(total.vms).toBe(vms.length);
  expect(total.vms).toBeLessThanOrEqual(limits.max_total_vms);
  for (const kv of (await store.list("ipamstate/")).kvs) {
    const id = kv.key.slice("ipamstate/".length);
    expect(dec(IpamStateRecord, kv.value).used).toBe((await store.list(netKeys.ipamPrefix(id))).kvs.length);
  }
}

describe("CreateVm group commit on real etcd", () => {
  it("queued creates share transactions; refusals are each request's own", async () => {
    const a = await replica(`/noid-cb1-${Date.now()}/`, true);
    try {
      // One owner's default network first, so the burst below measures creates only.
      await attempt(a, "solo", "first");
      const rev0 = await a.store.revision();
      const outs = await Promise.all([
        ...Array.from({ length: 25 }, (_, i) => attempt(a, "solo", `vm${i}`)),
        attempt(a, "solo", "vm3"), // asked twice
        attempt(a, "solo", "first"), // exists already
        attempt(a, "solo", "big", { vcpus: 8 }), // over the per-VM limit
        attempt(a, "solo", "elsewhere", { network: "nope" }), // no such network
      ]);
      const revs = (await a.store.revision()) - rev0;
      const ok = outs.filter((o) => o.ok);
      expect(ok.length).toBe(25);
      const bad = outs.filter((o): o is Extract<Outcome, { ok: false }> => !o.ok).map((o) => [o.name, o.code]);
      expect(bad).toEqual([
        ["vm3", "ALREADY_EXISTS"],
        ["first", "ALREADY_EXISTS"],
        ["big", "RESOURCE_EXHAUSTED"],
        ["elsewhere", "INVALID_ARGUMENT"],
      ]);
      // 25 VMs in far fewer write transactions than VMs (one round takes the first, the next ones the rest).
      expect(revs).toBeLessThanOrEqual(5);
      const acked = new Map((await a.store.list(keys.vmsPrefix)).kvs.map((kv) => [dec(Vm, kv.value).id, dec(Vm, kv.value)]));
      await checkStore(a.store, acked);
      const audit = new AuditLog(a.store, clock, true);
      expect((await audit.verify()).ok).toBe(true);
      expect((await audit.list({ limit: 1000, event: "vm.create" })).length).toBe(26);
    } finally {
      await a.stop();
    }
  });

  it("creates one at a time (the queue empty between them) read the counters and the network once; another replica's VM, once watched, has them read again (no failed round); unseen, a stale copy costs one failed round, not a wrong count", async () => {
    const prefix = `/noid-cb3-${Date.now()}/`;
    let counted: ReturnType<typeof countingStore<Store>> | undefined;
    const a = await replica(prefix, true, (s) => (counted = countingStore(s)).store);
    const b = await replica(prefix, true);
    try {
      const acked = new Map<string, Vm>();
      const ok = (o: Outcome) => {
        if (!o.ok) throw new Error(`${o.name}: ${o.code} ${o.message}`);
        acked.set(o.vm.vm.id, o.vm.vm);
      };
      ok(await attempt(a, "uma", "first")); // reads what it needs, creates the default network
      const before = counted!.count("get", "list");
      for (let i = 0; i < 5; i++) ok(await attempt(a, "uma", `one${i}`)); // each alone: the queue runs empty after each
      expect(counted!.count("get", "list") - before, "reads by five creates after the first").toBe(0);
      // Another replica creates for the same owner: a's copy of the counters and addresses is stale now.
      const other = await attempt(b, "uma", "other");
      ok(other);
      // a's watch has seen b's VM: a reads again before its transaction, instead of failing one on the stale copy.
      await a.informer!.waitFor(other.ok ? other.vm.modRevision : 0);
      const txns = counted!.count("txn");
      ok(await attempt(a, "uma", "after"));
      expect(counted!.count("get", "list") - before, "the stale copy was read again").toBeGreaterThan(0);
      expect(counted!.count("txn") - txns, "one transaction, none failed on the stale copy").toBe(1);
      // Without the watch's word (a's watch stopped) the stale copy costs one failed round, and the counts stay exact.
      await a.informer!.stop();
      ok(await attempt(b, "uma", "other2"));
      const t2 = counted!.count("txn");
      ok(await attempt(a, "uma", "after2"));
      expect(counted!.count("txn") - t2, "a failed round on the stale copy, then the create").toBe(2);
      await checkStore(a.store, acked);
      expect(new Set([...acked.values()].map((v) => v.status!.ip)).size).toBe(acked.size);
    } finally {
      await a.stop();
      await b.stop();
    }
  });

  it("two replicas racing, with limits, a full network and destroys: nothing twice, limits hold, every acknowledged VM exists once", async () => {
    const prefix = `/noid-cb2-${Date.now()}/`;
    const a = await replica(prefix, true);
    const b = await replica(prefix, false);
    try {
      // A small network for t2: 5 VM addresses (a /29 minus network, gateway and broadcast).
      await a.networks.create("t2", validateCreate({ name: "small", cidr: "10.50.0.0/29", egress: undefined, mode: "wireguard" }), { user: "t2", peer: "test" });
      const wave = (tag: string) =>
        ["t0", "t1", "t2"].flatMap((owner) =>
          Array.from({ length: 30 }, (_, i) => {
            const name = `${tag}${i % 20}`; // names 0..9 asked twice (once on each replica, mostly)
            const small = owner === "t2" && i % 3 === 0;
            return attempt(i % 2 === 0 ? a : b, owner, name, small ? { network: "small" } : {});
          }),
        );
      const first = await Promise.all(wave("w"));
      const acked = new Map<string, Vm>();
      for (const o of first) if (o.ok) acked.set(o.vm.vm.id, o.vm.vm);
      // Second wave while the first wave's VMs are destroyed on the other replica: the counters move
      // under the creating replica's cached view.
      const doomed = [...acked.values()].filter((_, i) => i % 3 === 0);
      const [second] = await Promise.all([
        Promise.all(wave("x")),
        Promise.all(doomed.map(async (vm, i) => {
          const r = await (i % 2 === 0 ? b : a).repo.requestDestroy(vm.id, vm.owner, "test");
          expect(r.removed).toBe(true);
          acked.delete(vm.id);
        })),
      ]);
      for (const o of second) if (o.ok) acked.set(o.vm.vm.id, o.vm.vm);
      const all = [...first, ...second];
      // Every refusal is one a single create could get on its own.
      for (const o of all) {
        if (o.ok) continue;
        expect(["ALREADY_EXISTS", "RESOURCE_EXHAUSTED"], o.message).toContain(o.code);
        if (o.code === "ALREADY_EXISTS") expect(all.some((p) => p.ok && p.owner === o.owner && p.name === o.name)).toBe(true);
      }
      // Both kinds of limit and the full network were reached.
      const messages = all.filter((o) => !o.ok).map((o) => (o as { message: string }).message);
      expect(messages.some((m) => m.includes("max_vms_per_user") || m.includes("max_total_vms"))).toBe(true);
      expect(messages.some((m) => m.includes('network "small"'))).toBe(true);
      // At most one success per name within each wave.
      for (const wave of [first, second]) {
        const won = wave.filter((o) => o.ok).map((o) => `${o.owner}/${o.name}`);
        expect(new Set(won).size).toBe(won.length);
      }
      await checkStore(a.store, acked);
      const audit = new AuditLog(a.store, clock, true);
      expect((await audit.verify()).ok).toBe(true);
      const creates = (await a.store.list(keys.auditPrefix)).kvs.map((kv) => dec(AuditEvent, kv.value)).filter((e) => e.event === "vm.create");
      expect(creates.length).toBe(all.filter((o) => o.ok).length);
    } finally {
      await a.stop();
      await b.stop();
    }
  });
});
