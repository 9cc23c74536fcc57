// The Store contract against real etcd and against the memory twin, plus what
// only one of them has: etcd outages and prefixes, the memory store's clock.
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { isNoidError, type NoidError } from "../../common/errors.js";
import { createEtcdStore, MemoryStore, type EtcdStore, type WatchEvent } from "../../coordinator/store/index.js";
import { registerStoreContract } from "../contract/store-contract.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

let shared: TestEtcd;
beforeAll(async () => {
  shared = await startTestEtcd();
});
afterAll(async () => {
  await shared?.stop();
});

registerStoreContract("memory", async () => {
  const store = new MemoryStore();
  return { store, cleanup: () => store.close() };
});

registerStoreContract("etcd", async () => {
  const store = await createEtcdStore({ endpoints: shared.endpoints, prefix: "/noid/v1/" });
  return { store, cleanup: () => store.close() };
});

describe("EtcdStore", () => {
  it("keeps keys under its prefix and returns them relative to it", async () => {
    const a = await createEtcdStore({ endpoints: shared.endpoints, prefix: "/noid/v1/" });
    const b = await createEtcdStore({ endpoints: shared.endpoints, prefix: "/noid/v1x/" });
    try {
      const k = `iso-${randomUUID()}`;
      await a.put(k, enc("a"));
      expect(await b.get(k)).toBeUndefined();
      expect((await b.list("")).kvs.map((kv) => kv.key)).not.toContain(k);
      expect((await a.list("iso-")).kvs.map((kv) => kv.key)).toContain(k);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it("fails fast on a wrong endpoint", async () => {
    const err = await createEtcdStore({ endpoints: ["http://127.0.0.1:1"], prefix: "/noid/v1/", requestTimeoutMs: 1000 }).catch((e: unknown) => e);
    expect(isNoidError(err, "UNAVAILABLE")).toBe(true);
  });

  it("skips a member that refuses connections: reads and transactions go to the next one", async () => {
    const prefix = `/skip-${randomUUID()}/`;
    const store = await createEtcdStore({ endpoints: ["http://127.0.0.1:1", ...shared.endpoints], prefix, requestTimeoutMs: 2000 });
    try {
      for (let i = 0; i < 5; i++) {
        const r = await store.txn([{ key: `k${i}`, target: "mod", op: "==", value: 0 }], [{ type: "put", key: `k${i}`, value: enc(`v${i}`) }]);
        expect(r.succeeded).toBe(true);
        expect(dec((await store.get(`k${i}`))!.value)).toBe(`v${i}`);
      }
      expect((await store.list("")).kvs.map((kv) => kv.key)).toEqual(["k0", "k1", "k2", "k3", "k4"]);
    } finally {
      await store.close();
    }
  });

  it("reports etcd's refusals as before: a key twice in one transaction is INVALID_ARGUMENT and nothing is written", async () => {
    const prefix = `/dup-${randomUUID()}/`;
    const store = await createEtcdStore({ endpoints: shared.endpoints, prefix });
    try {
      const err = await store.txn([], [{ type: "put", key: "a", value: enc("1") }, { type: "put", key: "a", value: enc("2") }]).catch((e: unknown) => e);
      expect(isNoidError(err, "INVALID_ARGUMENT")).toBe(true);
      expect((err as NoidError).message).toMatch(/duplicate key given in txn/);
      expect(await store.get("a")).toBeUndefined();
    } finally {
      await store.close();
    }
  });
});

describe("EtcdStore during an etcd outage", () => {
  let own: TestEtcd;
  let store: EtcdStore;
  beforeAll(async () => {
    own = await startTestEtcd();
    store = await createEtcdStore({ endpoints: own.endpoints, prefix: "/noid/v1/", requestTimeoutMs: 1000 });
  });
  afterAll(async () => {
    await store?.close();
    await own?.stop();
  });

  /** Runs `call`, expects UNAVAILABLE, and returns how long it took (a bound, not a speed test). */
  async function expectUnavailable(call: () => Promise<unknown>): Promise<number> {
    const started = Date.now();
    const err = (await call().then(
      () => undefined,
      (e: unknown) => e,
    )) as NoidError | undefined;
    expect(err?.code).toBe("UNAVAILABLE");
    expect(err?.message).toMatch(/^etcd unavailable: /);
    return Date.now() - started;
  }

  it("answers UNAVAILABLE while etcd is stopped, and works again after it restarts", async () => {
    await store.put("outage/k", enc("before"));
    const seen: WatchEvent[] = [];
    const w = await store.watch("outage/", { onEvents: (b) => void seen.push(...b) });

    await own.etcd.stop();
    expect(await expectUnavailable(() => store.get("outage/k"))).toBeLessThan(8000);
    expect(await expectUnavailable(() => store.txn([], [{ type: "put", key: "outage/x", value: enc("x") }]))).toBeLessThan(8000);
    expect(await expectUnavailable(() => store.grantLease(5))).toBeLessThan(8000);

    await own.etcd.restart();
    await vi.waitFor(async () => expect(dec((await store.get("outage/k"))!.value)).toBe("before"), { timeout: 20_000, interval: 200 });
    // The watch resumes on its own after the restart.
    await store.put("outage/k", enc("after"));
    await vi.waitFor(() => expect(seen.map((e) => e.type === "put" && dec(e.kv.value))).toContain("after"), { timeout: 20_000, interval: 100 });
    await w.cancel();
  });

  it("answers UNAVAILABLE within the request timeout while etcd is frozen (SIGSTOP)", async () => {
    own.etcd.kill("SIGSTOP");
    try {
      expect(await expectUnavailable(() => store.get("outage/k"))).toBeLessThan(8000);
      expect(await expectUnavailable(() => store.put("outage/k", enc("frozen")))).toBeLessThan(8000);
    } finally {
      own.etcd.kill("SIGCONT");
    }
    await vi.waitFor(() => store.get("outage/k"), { timeout: 20_000, interval: 200 });
    await store.put("outage/k", enc("thawed"));
    expect(dec((await store.get("outage/k"))!.value)).toBe("thawed");
  });
});

describe("MemoryStore with an injected clock", () => {
  it("expires leases when the clock passes their TTL, with delete events", async () => {
    let now = 1_000_000;
    const store = new MemoryStore({ clock: { now: () => now }, sweepIntervalMs: 0 });
    const lease = await store.grantLease(10);
    await store.put("a", enc("1"), { lease: lease.id });
    await store.put("b", enc("2"), { lease: lease.id });
    const events: WatchEvent[] = [];
    await store.watch("", { prevKv: true, onEvents: (b) => void events.push(...b) });

    now += 9_000;
    await lease.keepAliveOnce(); // renewed: 10 s from now
    now += 9_000;
    expect(await store.get("a")).toBeDefined();
    expect(await store.leaseTimeToLive(lease.id)).toBe(1);

    const before = await store.revision();
    now += 1_000;
    store.expireLeases();
    expect(await store.get("a")).toBeUndefined();
    expect(await store.revision()).toBe(before + 1); // both deletes in one revision, like etcd's revoke
    await vi.waitFor(() => expect(events.map((e) => e.type === "delete" && e.key)).toEqual(["a", "b"]));
    expect(events.every((e) => e.type === "delete" && e.modRevision === before + 1 && e.prev)).toBe(true);
    await expect(lease.keepAliveOnce()).rejects.toSatisfy((e) => isNoidError(e, "NOT_FOUND"));
    await store.close();
  });
});
