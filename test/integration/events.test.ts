// Events end to end: a real coordinator on real etcd records VM lifecycle,
// host membership and failed logins; EventService lists and follows them with
// filters and per-role visibility; noidctl events renders them; retention
// bounds the log in etcd.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../cli/program.js";
import { Role, NoidApiError, type Event, type NoidClient } from "../../sdk/index.js";
import { EVENTS_PREFIX, EventLog, WRITE_BATCH } from "../../coordinator/events/event-log.js";
import { createEtcdStore, type EtcdStore } from "../../coordinator/store/index.js";
import type { ListOptions } from "../../coordinator/store/store.js";
import { dec } from "../../coordinator/state/codec.js";
import { Event as EventRecord } from "../../gen/noid/v1/event.js";
import { auditPut } from "../../coordinator/audit-log.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

/** Collects a watch into an array until `stop()`. */
function collect(client: NoidClient, opts: Parameters<NoidClient["watchEvents"]>[0] = {}) {
  const ac = new AbortController();
  const got: Event[] = [];
  const done = (async () => {
    for await (const ev of client.watchEvents({ ...opts, signal: ac.signal })) got.push(ev);
  })();
  return { got, stop: async () => (ac.abort(), await done) };
}

describe("events", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let alice: NoidClient;
  let bob: NoidClient;
  let reader: NoidClient;
  let agent: SimAgent;
  let dir: string;

  const token = async (user: string, role: Role, name = `${user}-t`) => (await admin.createToken({ name, role, user })).secret;

  beforeAll(async () => {
    c = await startTestCoordinator({ agents: { lease_ttl_seconds: 2, heartbeat_interval_ms: 500 } });
    admin = c.client();
    alice = c.client(await token("alice", Role.ROLE_USER));
    bob = c.client(await token("bob", Role.ROLE_USER));
    reader = c.client(await token("alice", Role.ROLE_READ_ONLY, "alice-ro"));
    dir = mkdtempSync(join(tmpdir(), "noid-events-"));
    agent = new SimAgent({ address: c.address, token: c.adminToken, name: "hv-ev", autoRun: true });
    await agent.connect();
  });
  afterAll(async () => {
    agent?.close();
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const kinds = (evs: Event[]) => evs.map((e) => e.kind);

  it("records a VM's lifecycle and a host's joining, newest first", async () => {
    const vm = await alice.createVm("web", { vcpus: 1, memoryMb: 256 });
    // A host was ready: the leader placed the VM in its create transaction, the answer says where.
    expect(vm.status?.hostName).toBe("hv-ev");
    const evs = await eventually(async () => {
      const l = await admin.listEvents({ vm: "web" });
      return l.some((e) => e.kind === "vm.phase" && e.attributes.to === "running") ? l : undefined;
    });
    // Newest first: running comes after scheduled, which comes after created.
    const order = kinds(evs).reverse();
    expect(order.indexOf("vm.created")).toBeLessThan(order.indexOf("vm.scheduled"));
    expect(order.indexOf("vm.scheduled")).toBeLessThan(order.findIndex((k, i) => k === "vm.phase" && evs[evs.length - 1 - i]!.attributes.to === "running"));
    for (const e of evs) expect(e).toMatchObject({ vmId: vm.id, vmName: "web", owner: "alice" });
    expect(evs.find((e) => e.kind === "vm.scheduled")?.hostName).toBe("hv-ev");

    const host = await admin.listEvents({ kind: "host" });
    expect(kinds(host)).toEqual(expect.arrayContaining(["host.joined", "host.ready"]));
    expect(host.every((e) => e.hostName === "hv-ev" && e.hostId === agent.hostId)).toBe(true);
    // By host name or id, the same events.
    expect((await admin.listEvents({ host: agent.hostId })).map((e) => e.id)).toEqual((await admin.listEvents({ host: "hv-ev" })).map((e) => e.id));
  });

  it("filters by kind prefix (at a dot boundary), since and limit", async () => {
    const all = await admin.listEvents();
    expect(all.length).toBeGreaterThan(3);
    expect((await admin.listEvents({ kind: "vm" })).every((e) => e.kind.startsWith("vm."))).toBe(true);
    expect(await admin.listEvents({ kind: "vm.pha" })).toEqual([]);
    expect(await admin.listEvents({ since: new Date(Date.now() + 60_000) })).toEqual([]);
    const limited = await admin.listEvents({ limit: 2 });
    expect(limited.map((e) => e.id)).toEqual(all.slice(0, 2).map((e) => e.id));
  });

  it("shows non-admins only their own VMs' events", async () => {
    await bob.createVm("db", { vcpus: 1, memoryMb: 256 });
    await eventually(async () => (await bob.listEvents()).some((e) => e.vmName === "db"));
    const a = await alice.listEvents();
    expect(a.length).toBeGreaterThan(0);
    expect(a.every((e) => e.owner === "alice")).toBe(true);
    const b = await bob.listEvents();
    expect(b.every((e) => e.owner === "bob")).toBe(true);
    expect(await bob.listEvents({ vm: "web" })).toEqual([]);
    expect(await alice.listEvents({ kind: "host" })).toEqual([]);
    // Read-only: list yes, own only (a read-only token of alice sees exactly what alice sees).
    expect((await reader.listEvents()).map((e) => e.id)).toEqual((await alice.listEvents()).map((e) => e.id));
  });

  it("records failed logins for admins only", async () => {
    const anon = c.client("", { retries: 0 });
    expect((await failure(anon.login({ user: "alice", password: "not the password" }))).code).toBe("UNAUTHENTICATED");
    const f = await eventually(async () => (await admin.listEvents({ kind: "auth.failure" }))[0]);
    expect(f.severity).toBe("warning");
    expect(f.message).not.toContain("not the password");
    expect(await alice.listEvents({ kind: "auth" })).toEqual([]);
  });

  it("turns security.* audit entries (however written) into events owned by the VM's owner", async () => {
    const web = await alice.getVm("web");
    // The agents' security path writes audit entries; here one is written the way a
    // repository does, inside a transaction, so no code path is assumed.
    const put = auditPut({ event: "security.arp_spoof", user: "", vm: web.id, host: "hv-ev", success: false, detail: "7 forged ARP replies for 10.0.0.9", peer: "" }, new Date());
    expect((await c.handle.store.txn([], [put])).succeeded).toBe(true);
    const ev = await eventually(async () => (await alice.listEvents({ kind: "security" }))[0], 10_000, "the security event");
    expect(ev).toMatchObject({ kind: "security.arp_spoof", vmName: "web", owner: "alice", hostName: "hv-ev", severity: "warning", message: "7 forged ARP replies for 10.0.0.9" });
    expect(await bob.listEvents({ kind: "security" })).toEqual([]);
    expect((await admin.listEvents({ kind: "security", host: "hv-ev" })).map((e) => e.id)).toEqual([ev.id]);
  });

  it("streams new events to watchers, each seeing only what it may", async () => {
    const aw = collect(alice, { kind: "vm" });
    const bw = collect(bob, { kind: "vm" });
    const since = new Date(Date.now() - 3_600_000);
    const replay = collect(admin, { kind: "host.joined", since });
    try {
      // A watch opens asynchronously; keep creating until alice's watch has seen one of hers.
      let n = 0;
      await eventually(async () => {
        await alice.createVm(`w${++n}`, { vcpus: 1, memoryMb: 128 });
        return aw.got.some((e) => e.kind === "vm.created");
      }, 15_000, "alice's watch to see her VM");
      await bob.createVm("bw", { vcpus: 1, memoryMb: 128 });
      await eventually(() => bw.got.some((e) => e.vmName === "bw"), 10_000, "bob's watch to see his VM");
      expect(bw.got.every((e) => e.owner === "bob")).toBe(true);
      expect(aw.got.every((e) => e.owner === "alice" && e.kind.startsWith("vm."))).toBe(true);
      await eventually(() => replay.got.length > 0, 10_000, "replay since");
      expect(replay.got[0]).toMatchObject({ kind: "host.joined", hostName: "hv-ev" });
    } finally {
      await Promise.all([aw.stop(), bw.stop(), replay.stop()]);
    }
  });

  it("refuses bad filters with INVALID_ARGUMENT", async () => {
    expect((await failure(admin.listEvents({ kind: "Not A Kind" }))).code).toBe("INVALID_ARGUMENT");
    expect((await failure(admin.listEvents({ vm: "../x" }))).message).toMatch(/^vm:/);
    expect((await failure(admin.listEvents({ limit: 20_000 }))).message).toMatch(/^limit:/);
  });

  it("noidctl events lists, filters and renders JSON", async () => {
    const cli = async (args: string[]) => {
      let out = "";
      let err = "";
      const code = await run(args, {
        env: { HOME: join(dir, "home"), NOID_CONFIG: join(dir, "config.toml"), NOID_SERVER: c.address, NOID_TOKEN: c.adminToken, NOID_INSECURE: "1" },
        io: { stdout: (s) => void (out += s), stderr: (s) => void (err += s), readStdin: async () => "", isTTY: false, cwd: dir },
      });
      return { code, out, err };
    };
    const table = await cli(["events", "--host", "hv-ev"]);
    expect(table.code).toBe(0);
    expect(table.out.split("\n")[0]).toMatch(/^TIME\s+KIND\s+VM\s+HOST\s+MESSAGE/);
    expect(table.out).toContain("host.joined");
    const json = await cli(["events", "--vm", "web", "--kind", "vm.phase", "--since", "1h", "-o", "json"]);
    expect(json.code).toBe(0);
    const parsed = JSON.parse(json.out) as Array<{ kind: string; vmName: string }>;
    expect(parsed.length).toBeGreaterThan(0);
    expect(parsed.every((e) => e.kind === "vm.phase" && e.vmName === "web")).toBe(true);
    const bad = await cli(["events", "--since", "yesterday"]);
    expect(bad.code).not.toBe(0);
    expect(bad.err).toMatch(/invalid duration/);
  });

  it("noidctl events --watch follows new events until interrupted", async () => {
    const ac = new AbortController();
    let out = "";
    const done = run(["events", "--watch", "--kind", "vm.created"], {
      env: { HOME: join(dir, "home"), NOID_CONFIG: join(dir, "config.toml"), NOID_SERVER: c.address, NOID_TOKEN: c.adminToken, NOID_INSECURE: "1" },
      io: { stdout: (s) => void (out += s), stderr: () => undefined, readStdin: async () => "", isTTY: false, cwd: dir },
      signal: ac.signal,
    });
    let n = 0;
    await eventually(async () => {
      await admin.createVm(`cw${++n}`, { vcpus: 1, memoryMb: 128 });
      return out.includes("vm.created");
    }, 15_000, "the CLI watch to print an event");
    ac.abort();
    expect(await done).toBe(0);
    expect(out.split("\n")[0]).toMatch(/^TIME\s+KIND/);
  });

  it("records a host going unreachable when its agent's lease ends", async () => {
    agent.close();
    const ev = await eventually(async () => (await admin.listEvents({ kind: "host.unreachable", host: "hv-ev" }))[0], 15_000, "host.unreachable");
    expect(ev).toMatchObject({ severity: "warning", hostId: agent.hostId });
  });
});

describe("event writes against real etcd", () => {
  it("group-commits a burst: few transactions, every event stored once, listed in the order recorded", async () => {
    const { endpoints, stop } = await startTestEtcd();
    const store = await createEtcdStore({ endpoints, prefix: `/g${Math.random().toString(16).slice(2, 8)}/` });
    try {
      const log = new EventLog({ store, clock: { now: () => new Date(Date.parse("2026-01-01T00:00:00Z")) }, retention: { maxCount: 10_000, maxAgeMs: 0 } });
      const before = await store.revision();
      // 250 events in one burst, all in the same millisecond of the log's clock.
      const written = await Promise.all(Array.from({ length: 250 }, (_, i) => log.record({ kind: "vm.phase", message: `b${i}` })));
      expect(written.map((e) => e.message)).toEqual(Array.from({ length: 250 }, (_, i) => `b${i}`));
      const txns = (await store.revision()) - before;
      expect(txns).toBeGreaterThanOrEqual(Math.ceil(250 / WRITE_BATCH));
      expect(txns).toBeLessThan(10);
      expect(log.writes).toEqual({ txns, events: 250 });
      const listed = await log.list({ limit: 1000 });
      expect(listed.map((e) => e.message)).toEqual(Array.from({ length: 250 }, (_, i) => `b${249 - i}`)); // newest first
      expect((await store.list(EVENTS_PREFIX)).kvs).toHaveLength(250);
      // A lone event is written too (no burst to wait for), and flush() returns once it is.
      const lone = log.record({ kind: "vm.phase", message: "alone" });
      await log.flush();
      expect((await lone).message).toBe("alone");
      expect((await store.list(EVENTS_PREFIX)).kvs).toHaveLength(251);
    } finally {
      await store.close();
      await stop();
    }
  });

  it("a failed write rejects the events of that batch, and later events are written", async () => {
    const { endpoints, stop } = await startTestEtcd();
    const store = await createEtcdStore({ endpoints, prefix: `/f${Math.random().toString(16).slice(2, 8)}/` });
    try {
      let fail = true;
      const flaky = new Proxy(store, {
        get(t, k, recv) {
          if (k === "txn" && fail) return async () => Promise.reject(new Error("etcd unavailable"));
          const v = Reflect.get(t, k, recv) as unknown;
          return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(t) : v;
        },
      });
      const log = new EventLog({ store: flaky, clock: { now: () => new Date() }, retention: { maxCount: 100, maxAgeMs: 0 } });
      await expect(log.record({ kind: "vm.phase", message: "lost" })).rejects.toThrow(/etcd unavailable/);
      fail = false;
      await log.record({ kind: "vm.phase", message: "kept" });
      expect((await log.list({ limit: 10 })).map((e) => e.message)).toEqual(["kept"]);
    } finally {
      await store.close();
      await stop();
    }
  });
});

describe("event retention against real etcd", () => {
  let etcd: TestEtcd;
  const stores: EtcdStore[] = [];
  beforeAll(async () => {
    etcd = await startTestEtcd();
  });
  afterAll(async () => {
    for (const s of stores) await s.close();
    await etcd?.stop();
  });
  /** A store of its own (own prefix) on the shared etcd. */
  const freshStore = async () => {
    const s = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/r${Math.random().toString(16).slice(2, 8)}/` });
    stores.push(s);
    return s;
  };

  it("keeps the newest maxCount and drops events older than maxAge", async () => {
    const store = await freshStore();
    let now = Date.parse("2026-01-01T00:00:00Z");
    const log = new EventLog({ store, clock: { now: () => new Date(now) }, retention: { maxCount: 20, maxAgeMs: 3_600_000 } });
    for (let i = 0; i < 35; i++) {
      now += 1000;
      await log.record({ kind: "vm.phase", message: `n${i}` });
    }
    // Writing past a tenth of the bound trims on its own; an explicit trim settles it.
    await log.trim();
    let left = await log.list({ limit: 1000 });
    expect(left).toHaveLength(20);
    expect(left[0]!.message).toBe("n34");
    expect(left.at(-1)!.message).toBe("n15");
    now += 3_600_000 - 9_500; // n25..n34 are younger than an hour, the rest older
    expect(await log.trim()).toBe(10);
    left = await log.list({ limit: 1000 });
    expect(left.map((e) => e.message)).toEqual(["n34", "n33", "n32", "n31", "n30", "n29", "n28", "n27", "n26", "n25"]);
    expect((await store.list(EVENTS_PREFIX)).kvs).toHaveLength(10);
  });

  it("lists newest first a page at a time: a user's sparse events across pages, since, and a limit, as a read of everything would", async () => {
    const store = await freshStore();
    let now = Date.parse("2026-03-01T00:00:00Z");
    const log = new EventLog({ store, clock: { now: () => new Date((now += 1000)) }, retention: { maxCount: 100_000, maxAgeMs: 0 } });
    // 500 events, one in five bob's: his 60 newest take three pages of 120.
    for (let i = 0; i < 500; i += 100) await Promise.all(Array.from({ length: 100 }, (_, j) => log.record({ kind: "vm.phase", owner: (i + j) % 5 === 0 ? "bob" : "carol", message: `e${i + j}` })));
    const everything = (await store.list(EVENTS_PREFIX)).kvs.map((kv) => dec(EventRecord, kv.value)).reverse();
    const bob = { user: "bob", role: Role.ROLE_USER, tokenId: "t", tokenName: "t" };
    const mine = everything.filter((e) => e.owner === "bob");
    expect((await log.list({ limit: 60 }, bob)).map((e) => e.id)).toEqual(mine.slice(0, 60).map((e) => e.id));
    expect((await log.list({ limit: 1000 }, bob)).map((e) => e.id)).toEqual(mine.map((e) => e.id));
    const since = everything[250]!.time!;
    expect((await log.list({ limit: 1000, since })).map((e) => e.id)).toEqual(everything.slice(0, 251).map((e) => e.id));
    expect((await log.list({ limit: 7 })).map((e) => e.id)).toEqual(everything.slice(0, 7).map((e) => e.id));
  });

  it("a trim reads keys only, and gets through more events over the bound than one read of the oldest holds", async () => {
    const real = await freshStore();
    const lists: { keysOnly: boolean; values: number }[] = [];
    const store = new Proxy(real, {
      get(t, k, recv) {
        const v = Reflect.get(t, k, recv) as unknown;
        if (k === "list")
          return async (prefix: string, opts?: ListOptions) => {
            const r = await t.list(prefix, opts);
            lists.push({ keysOnly: opts?.keysOnly === true, values: r.kvs.reduce((n, kv) => n + kv.value.length, 0) });
            return r;
          };
        return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    // 1,250 events written while the bound is huge (no trim yet), then the bound drops to 10.
    const retention = { maxCount: 1_000_000, maxAgeMs: 0 };
    const log = new EventLog({ store, clock: { now: () => new Date() }, retention });
    await Promise.all(Array.from({ length: 1250 }, (_, i) => log.record({ kind: "vm.phase", message: `m${String(i).padStart(4, "0")}` })));
    retention.maxCount = 10;
    lists.length = 0;
    expect(await log.trim()).toBe(1240);
    expect(lists.length).toBeGreaterThanOrEqual(2); // the first read of the oldest keys did not reach the 1,240th
    expect(lists.every((l) => l.keysOnly && l.values === 0)).toBe(true);
    const left = (await real.list(EVENTS_PREFIX)).kvs.map((kv) => dec(EventRecord, kv.value).message).sort();
    expect(left).toEqual(Array.from({ length: 10 }, (_, i) => `m${1240 + i}`));
  });
});
