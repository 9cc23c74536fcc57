// The Store contract: every implementation (etcd, memory) must pass the same
// suite, so unit tests on the memory twin mean something for production.
// Each test works under its own random key prefix, so one etcd can serve all.
import { randomUUID } from "node:crypto";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { isNoidError } from "../../common/errors.js";
import type { Store, WatchEvent, WatchOptions } from "../../coordinator/store/store.js";

export interface StoreUnderTest {
  store: Store;
  cleanup(): Promise<void>;
}

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);
const WAIT = { timeout: 15_000, interval: 25 };

/** Short summary of an event for readable assertions. */
function show(ev: WatchEvent): string {
  if (ev.type === "put") return `put ${ev.kv.key}=${dec(ev.kv.value)}${ev.prev ? ` (was ${dec(ev.prev.value)})` : ""}`;
  return `delete ${ev.key}${ev.prev ? ` (was ${dec(ev.prev.value)})` : ""}`;
}

function collect(opts: Omit<WatchOptions, "onEvents"> = {}) {
  const events: WatchEvent[] = [];
  const errors: Error[] = [];
  return {
    events,
    errors,
    shown: () => events.map(show),
    opts: { ...opts, onEvents: (b: WatchEvent[]) => void events.push(...b), onError: (e: Error) => void errors.push(e) } as WatchOptions,
  };
}

export function registerStoreContract(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`Store contract: ${name}`, () => {
    let sut: StoreUnderTest;
    let store: Store;
    let p: string; // this test's key prefix

    beforeEach(async () => {
      sut = await makeStore();
      store = sut.store;
      p = `t${randomUUID().slice(0, 8)}/`;
    });
    afterEach(async () => {
      await sut.cleanup();
    });

    it("puts, gets and deletes with revisions and versions", async () => {
      expect(await store.get(`${p}a`)).toBeUndefined();
      const r1 = await store.put(`${p}a`, enc("one"));
      const kv1 = await store.get(`${p}a`);
      expect(kv1).toMatchObject({ key: `${p}a`, modRevision: r1, createRevision: r1, version: 1, lease: 0 });
      expect(dec(kv1!.value)).toBe("one");

      const r2 = await store.put(`${p}a`, enc("two"));
      expect(r2).toBeGreaterThan(r1);
      expect(await store.get(`${p}a`)).toMatchObject({ modRevision: r2, createRevision: r1, version: 2 });

      const r3 = await store.delete(`${p}a`);
      expect(r3).toBeGreaterThan(r2);
      expect(await store.get(`${p}a`)).toBeUndefined();
      // Deleting what is not there changes nothing, not even the revision.
      expect(await store.delete(`${p}a`)).toBe(await store.revision());
      await store.put(`${p}a`, enc("again"));
      expect(await store.get(`${p}a`)).toMatchObject({ version: 1 });
    });

    it("lists a prefix sorted by key, at a revision, with a limit", async () => {
      await store.put(`${p}c`, enc("3"));
      await store.put(`${p}a`, enc("1"));
      await store.put(`${p}b/x`, enc("2"));
      const last = await store.put(`${p.slice(0, -1)}-outside`, enc("no"));
      const all = await store.list(p);
      expect(all.kvs.map((kv) => kv.key)).toEqual([`${p}a`, `${p}b/x`, `${p}c`]);
      expect(all.kvs.map((kv) => dec(kv.value))).toEqual(["1", "2", "3"]);
      expect(all.revision).toBe(last);
      expect((await store.list(p, { limit: 2 })).kvs.map((kv) => kv.key)).toEqual([`${p}a`, `${p}b/x`]);
      expect((await store.list(`${p}zzz`)).kvs).toEqual([]);
      // The count is of every key under the prefix, even when the limit returned fewer.
      expect(all.count).toBe(3);
      expect((await store.list(p, { limit: 1 })).count).toBe(3);
      expect((await store.list(`${p}zzz`)).count).toBe(0);
      // Keys only: the keys and revisions, every value empty.
      const keysOnly = await store.list(p, { keysOnly: true, limit: 2 });
      expect(keysOnly.kvs.map((kv) => [kv.key, kv.modRevision, kv.value.length])).toEqual(all.kvs.slice(0, 2).map((kv) => [kv.key, kv.modRevision, 0]));
      expect(keysOnly.count).toBe(3);
      // Newest (last key) first, and pages before a key.
      expect((await store.list(p, { newestFirst: true })).kvs.map((kv) => kv.key)).toEqual([`${p}c`, `${p}b/x`, `${p}a`]);
      const page = await store.list(p, { newestFirst: true, limit: 2 });
      expect(page.kvs.map((kv) => kv.key)).toEqual([`${p}c`, `${p}b/x`]);
      const next = await store.list(p, { newestFirst: true, limit: 2, before: page.kvs.at(-1)!.key });
      expect(next.kvs.map((kv) => [kv.key, dec(kv.value)])).toEqual([[`${p}a`, "1"]]);
      expect(next.count).toBe(1);
      expect((await store.list(p, { before: `${p}c` })).kvs.map((kv) => kv.key)).toEqual([`${p}a`, `${p}b/x`]);
    });

    it("txn: create-if-absent succeeds once; the failure branch runs on conflict", async () => {
      const absent = { key: `${p}name`, target: "create", op: "==", value: 0 } as const;
      const first = await store.txn([absent], [{ type: "put", key: `${p}name`, value: enc("first") }]);
      expect(first.succeeded).toBe(true);
      expect(first.revision).toBe(await store.revision());

      const second = await store.txn(
        [absent],
        [{ type: "put", key: `${p}name`, value: enc("second") }],
        [{ type: "put", key: `${p}lost`, value: enc("yes") }],
      );
      expect(second.succeeded).toBe(false);
      expect(dec((await store.get(`${p}name`))!.value)).toBe("first");
      expect(dec((await store.get(`${p}lost`))!.value)).toBe("yes");

      // A failed txn without a failure branch changes nothing.
      const before = await store.revision();
      const third = await store.txn([absent], [{ type: "put", key: `${p}name`, value: enc("third") }]);
      expect(third).toEqual({ succeeded: false, revision: before });
    });

    it("txn: mod revision, version and value compares", async () => {
      const r1 = await store.put(`${p}k`, enc("v1"));
      const stale = await store.put(`${p}k`, enc("v2")).then(() => r1);
      const cur = (await store.get(`${p}k`))!;

      const lost = await store.txn([{ key: `${p}k`, target: "mod", op: "==", value: stale }], [{ type: "put", key: `${p}k`, value: enc("x") }]);
      expect(lost.succeeded).toBe(false);
      const won = await store.txn([{ key: `${p}k`, target: "mod", op: "==", value: cur.modRevision }], [{ type: "put", key: `${p}k`, value: enc("v3") }]);
      expect(won.succeeded).toBe(true);
      expect((await store.get(`${p}k`))!.modRevision).toBe(won.revision);

      const holds = async (c: Parameters<Store["txn"]>[0][number]) => (await store.txn([c], [])).succeeded;
      expect(await holds({ key: `${p}k`, target: "version", op: "==", value: 3 })).toBe(true);
      expect(await holds({ key: `${p}k`, target: "version", op: ">", value: 2 })).toBe(true);
      expect(await holds({ key: `${p}k`, target: "version", op: "<", value: 3 })).toBe(false);
      expect(await holds({ key: `${p}k`, target: "create", op: "==", value: r1 })).toBe(true);
      expect(await holds({ key: `${p}k`, target: "create", op: "!=", value: 0 })).toBe(true);
      expect(await holds({ key: `${p}k`, target: "value", op: "==", value: enc("v3") })).toBe(true);
      expect(await holds({ key: `${p}k`, target: "value", op: "!=", value: enc("v3") })).toBe(false);
      expect(await holds({ key: `${p}k`, target: "value", op: ">", value: enc("v2") })).toBe(true);
      // A missing key has create/mod/version 0, and no value compare holds on it.
      expect(await holds({ key: `${p}missing`, target: "mod", op: "==", value: 0 })).toBe(true);
      expect(await holds({ key: `${p}missing`, target: "version", op: "==", value: 0 })).toBe(true);
      expect(await holds({ key: `${p}missing`, target: "value", op: "!=", value: enc("x") })).toBe(false);
    });

    it("txn: all writes of one txn share one revision; deletePrefix stays inside its prefix", async () => {
      const res = await store.txn(
        [],
        [
          { type: "put", key: `${p}d/a`, value: enc("1") },
          { type: "put", key: `${p}d/b`, value: enc("2") },
          { type: "put", key: `${p}dd`, value: enc("3") },
        ],
      );
      expect(res.succeeded).toBe(true);
      const listed = await store.list(p);
      expect(listed.kvs.map((kv) => kv.modRevision)).toEqual([res.revision, res.revision, res.revision]);

      const del = await store.txn([], [{ type: "deletePrefix", prefix: `${p}d/` }]);
      expect(del.revision).toBe(res.revision + 1);
      expect((await store.list(p)).kvs.map((kv) => kv.key)).toEqual([`${p}dd`]);
    });

    it("txn: writing one key twice in one txn is INVALID_ARGUMENT, like etcd", async () => {
      const put = { type: "put", key: `${p}k`, value: enc("v") } as const;
      await expect(store.txn([], [put, put])).rejects.toSatisfy((e) => isNoidError(e, "INVALID_ARGUMENT"));
      expect(await store.get(`${p}k`)).toBeUndefined();
    });

    it("watch replays from a revision, then delivers live changes with prevKv", async () => {
      const r1 = await store.put(`${p}w/a`, enc("1"));
      await store.put(`${p}w/a`, enc("2"));
      await store.put(`${p}other`, enc("not watched"));
      const c = collect({ fromRevision: r1, prevKv: true });
      const w = await store.watch(`${p}w/`, c.opts);
      await vi.waitFor(() => expect(c.shown()).toEqual([`put ${p}w/a=1`, `put ${p}w/a=2 (was 1)`]), WAIT);

      await store.put(`${p}w/b`, enc("3"));
      await store.delete(`${p}w/a`);
      await vi.waitFor(() => expect(c.events).toHaveLength(4), WAIT);
      expect(c.shown().slice(2)).toEqual([`put ${p}w/b=3`, `delete ${p}w/a (was 2)`]);
      const del = c.events[3]!;
      expect(del.type === "delete" && del.modRevision).toBe(await store.revision());
      const revs = c.events.map((e) => (e.type === "put" ? e.kv.modRevision : e.modRevision));
      expect([...revs].sort((a, b) => a - b)).toEqual(revs);
      expect(c.errors).toEqual([]);
      await w.cancel();
    });

    it("watch without fromRevision sees only later changes, and without prevKv no prev", async () => {
      await store.put(`${p}a`, enc("before"));
      const c = collect();
      const w = await store.watch(p, c.opts);
      await store.put(`${p}a`, enc("after"));
      await store.delete(`${p}a`);
      await vi.waitFor(() => expect(c.shown()).toEqual([`put ${p}a=after`, `delete ${p}a`]), WAIT);
      await w.cancel();
    });

    it("a cancelled watch delivers nothing more", async () => {
      const cancelled = collect();
      const live = collect();
      const w1 = await store.watch(p, cancelled.opts);
      const w2 = await store.watch(p, live.opts);
      await store.put(`${p}a`, enc("1"));
      await vi.waitFor(() => expect(cancelled.events).toHaveLength(1), WAIT);
      await w1.cancel();
      await store.put(`${p}a`, enc("2"));
      await store.put(`${p}sentinel`, enc("s"));
      // Once the other watcher has seen the sentinel, the cancelled one would have too.
      await vi.waitFor(() => expect(live.events).toHaveLength(3), WAIT);
      expect(cancelled.shown()).toEqual([`put ${p}a=1`]);
      await w2.cancel();
    });

    it("a watch whose handler throws reports onError and stops", async () => {
      const errors: Error[] = [];
      let calls = 0;
      await store.watch(p, {
        onEvents: () => {
          calls++;
          throw new Error("boom");
        },
        onError: (e) => void errors.push(e),
      });
      await store.put(`${p}a`, enc("1"));
      await vi.waitFor(() => expect(errors).toHaveLength(1), WAIT);
      await store.put(`${p}a`, enc("2"));
      const probe = collect();
      const w = await store.watch(p, { ...probe.opts, fromRevision: await store.revision() });
      await vi.waitFor(() => expect(probe.events).toHaveLength(1), WAIT);
      expect(calls).toBe(1);
      await w.cancel();
    });

    it("an expired lease deletes its keys (with watch delete events)", async () => {
      const lease = await store.grantLease(1);
      expect(lease.id).toBeGreaterThan(0);
      expect(Number.isSafeInteger(lease.id)).toBe(true);
      await store.put(`${p}alive`, enc("yes"), { lease: lease.id });
      await store.txn([], [{ type: "put", key: `${p}alive2`, value: enc("yes"), lease: lease.id }]);
      expect((await store.get(`${p}alive`))!.lease).toBe(lease.id);
      expect(await store.leaseTimeToLive(lease.id)).toBeGreaterThan(0);
      const c = collect({ prevKv: true });
      const w = await store.watch(p, c.opts);

      await vi.waitFor(async () => expect((await store.list(p)).kvs).toEqual([]), WAIT);
      await vi.waitFor(() => expect(c.shown().sort()).toEqual([`delete ${p}alive (was yes)`, `delete ${p}alive2 (was yes)`]), WAIT);
      expect(await store.leaseTimeToLive(lease.id)).toBeUndefined();
      await expect(lease.keepAliveOnce()).rejects.toSatisfy((e) => isNoidError(e, "NOT_FOUND"));
      await expect(store.put(`${p}late`, enc("x"), { lease: lease.id })).rejects.toSatisfy((e) => isNoidError(e, "NOT_FOUND"));
      await w.cancel();
    });

    it("keepAliveOnce renews a live lease; revoke deletes its keys", async () => {
      const lease = await store.grantLease(30);
      await store.put(`${p}k`, enc("v"), { lease: lease.id });
      await lease.keepAliveOnce();
      const ttl = await store.leaseTimeToLive(lease.id);
      expect(ttl).toBeGreaterThan(0);
      expect(ttl).toBeLessThanOrEqual(30);
      // A key put again without the lease is no longer bound to it.
      await store.put(`${p}free`, enc("v"), { lease: lease.id });
      await store.put(`${p}free`, enc("v2"));
      expect((await store.get(`${p}free`))!.lease).toBe(0);

      await lease.revoke();
      expect(await store.get(`${p}k`)).toBeUndefined();
      expect(await store.get(`${p}free`)).toBeDefined();
      expect(await store.leaseTimeToLive(lease.id)).toBeUndefined();
      await lease.revoke(); // idempotent
    });

    it("concurrent renewals of many leases (and of one lease twice) each answer for their own lease", async () => {
      const leases = await Promise.all(Array.from({ length: 20 }, () => store.grantLease(30)));
      const gone = leases[7]!;
      await gone.revoke();
      const results = await Promise.allSettled([...leases, leases[3]!, leases[3]!].map((l) => l.keepAliveOnce()));
      results.forEach((r, i) => {
        const l = [...leases, leases[3]!, leases[3]!][i]!;
        if (l === gone) expect(r.status === "rejected" && isNoidError(r.reason, "NOT_FOUND"), `lease ${i}`).toBe(true);
        else expect(r.status, `lease ${i}`).toBe("fulfilled");
      });
      for (const l of leases) if (l !== gone) expect(await store.leaseTimeToLive(l.id)).toBeGreaterThan(0);
      await Promise.all(leases.map((l) => l.revoke()));
    });

    it("revision() follows writes; a watch from a compacted revision reports onError", async () => {
      const r0 = await store.revision();
      const r1 = await store.put(`${p}a`, enc("1"));
      expect(r1).toBeGreaterThan(r0);
      const r2 = await store.put(`${p}a`, enc("2"));
      expect(await store.revision()).toBe(r2);

      await store.compact(r2);
      await store.compact(r2); // again: no error
      const old = collect();
      await store.watch(p, { ...old.opts, fromRevision: r1 });
      await vi.waitFor(() => expect(old.errors).toHaveLength(1), WAIT);
      expect(old.errors[0]).toSatisfy((e) => isNoidError(e, "FAILED_PRECONDITION") && /compacted/.test((e as Error).message));
      expect(old.events).toEqual([]);

      // Data survives compaction; the compaction revision itself is still watchable.
      expect(dec((await store.get(`${p}a`))!.value)).toBe("2");
      const ok = collect();
      const w = await store.watch(p, { ...ok.opts, fromRevision: r2 });
      await vi.waitFor(() => expect(ok.shown()).toEqual([`put ${p}a=2`]), WAIT);
      expect(ok.errors).toEqual([]);
      await w.cancel();
    });
  });
}
