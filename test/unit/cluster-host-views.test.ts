// ClusterState.hostViews keeps the list it returned last and rebuilds only the
// views of hosts whose record, allocation or liveness changed (a thousand
// hosts were rebuilt for every placement). Property: after any sequence of
// host, allocation and liveness writes and removals, the list equals the one
// a freshly started ClusterState builds from the same store, and a list handed
// out earlier never changes under its holder.
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { ClusterState, type ViewMark } from "../../coordinator/state/cluster.js";
import { keys } from "../../coordinator/state/keys.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import { silentLogger } from "../../common/logger.js";
import { Host } from "../../gen/noid/v1/host.js";
import { AllocationRecord } from "../../gen/noid/v1/records.js";
import type { HostView } from "../../coordinator/scheduler/types.js";

const IDS = ["a1", "b2", "c3", "d4"];

type Op =
  | { kind: "host"; id: string; vcpus: number; cordoned: boolean }
  | { kind: "unhost"; id: string }
  | { kind: "alloc"; id: string; vcpus: number }
  | { kind: "unalloc"; id: string }
  | { kind: "alive"; id: string }
  | { kind: "dead"; id: string };

const id = fc.constantFrom(...IDS);
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant("host" as const), id, vcpus: fc.integer({ min: 1, max: 8 }), cordoned: fc.boolean() }),
  fc.record({ kind: fc.constant("unhost" as const), id }),
  fc.record({ kind: fc.constant("alloc" as const), id, vcpus: fc.integer({ min: 0, max: 8 }) }),
  fc.record({ kind: fc.constant("unalloc" as const), id }),
  fc.record({ kind: fc.constant("alive" as const), id }),
  fc.record({ kind: fc.constant("dead" as const), id }),
);

async function apply(store: MemoryStore, op: Op): Promise<number> {
  switch (op.kind) {
    case "host":
      return store.put(keys.host(op.id), Host.encode(Host.fromPartial({ id: op.id, name: `h-${op.id}`, cordoned: op.cordoned, capacity: { vcpus: op.vcpus, memoryMb: 1024, diskGb: 10 } })).finish());
    case "unhost":
      return store.delete(keys.host(op.id));
    case "alloc":
      return store.put(keys.alloc(op.id), AllocationRecord.encode(AllocationRecord.fromPartial({ allocated: { vcpus: op.vcpus, memoryMb: 0, diskGb: 0 }, vmCount: op.vcpus })).finish());
    case "unalloc":
      return store.delete(keys.alloc(op.id));
    case "alive":
      return store.put(keys.alive(op.id), Buffer.from("x"));
    case "dead":
      return store.delete(keys.alive(op.id));
  }
}

const byId = (l: readonly HostView[]) => [...l].sort((x, y) => x.id.localeCompare(y.id));
const copy = (l: readonly HostView[]) => JSON.parse(JSON.stringify(l)) as unknown;

const clusters: ClusterState[] = [];
afterEach(async () => {
  await Promise.all(clusters.splice(0).map((c) => c.stop()));
});

/** Until the informer that `op` touched shows it (a removal of a missing key changes nothing). */
async function caughtUp(c: ClusterState, op: Op, rev: number): Promise<void> {
  const [inf, key] =
    op.kind === "host" || op.kind === "unhost" ? [c.hosts, keys.host(op.id)] : op.kind === "alloc" || op.kind === "unalloc" ? [c.alloc, keys.alloc(op.id)] : [c.alive, keys.alive(op.id)];
  const put = op.kind === "host" || op.kind === "alloc" || op.kind === "alive";
  for (let i = 0; i < 500; i++) {
    const e = (inf as { get(k: string): { modRevision: number } | undefined }).get(key);
    if (put ? e?.modRevision === rev : e === undefined) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error(`informer did not show ${op.kind} ${op.id}`);
}

describe("ClusterState.hostViews", () => {
  it("equals a fresh build after any changes, and never changes a list already handed out", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), fc.array(fc.boolean(), { minLength: 25, maxLength: 25 }), async (ops, reads) => {
        const store = new MemoryStore({ sweepIntervalMs: 0 });
        const live = new ClusterState(store, silentLogger());
        clusters.push(live);
        await live.start();
        const handedOut: { list: readonly HostView[]; snapshot: unknown }[] = [];
        let last: { list: readonly HostView[]; mark: ViewMark } | undefined;
        for (const [i, op] of ops.entries()) {
          const r = await apply(store, op);
          await caughtUp(live, op, r);
          // Read between some changes only: several changes may pile up before a read.
          if (reads[i]) {
            const since = live.hostViewsSince(last?.mark);
            const l = since.list;
            expect(l).toBe(live.hostViews());
            // What hostViewsSince says changed covers every place holding another view (or it says it cannot tell).
            if (since.changed !== undefined) {
              expect(l.length).toBe(last!.list.length);
              l.forEach((v, j) => (v !== last!.list[j] ? expect(since.changed!.has(j)).toBe(true) : undefined));
            }
            last = { list: l, mark: since.mark };
            handedOut.push({ list: l, snapshot: copy(l) });
          }
        }
        const fresh = new ClusterState(store, silentLogger());
        clusters.push(fresh);
        await fresh.start();
        expect(byId(live.hostViews())).toEqual(byId(fresh.hostViews()));
        for (const h of handedOut) expect(copy(h.list)).toEqual(h.snapshot);
      }),
      { numRuns: 150 },
    );
  });

  it("reuses the list while nothing changed, and rebuilds only a changed host's view", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const c = new ClusterState(store, silentLogger());
    clusters.push(c);
    await c.start();
    for (const h of IDS) {
      const op: Op = { kind: "host", id: h, vcpus: 4, cordoned: false };
      await caughtUp(c, op, await apply(store, op));
    }
    const first = c.hostViews();
    expect(c.hostViews()).toBe(first);
    const op: Op = { kind: "alloc", id: "c3", vcpus: 3 };
    await caughtUp(c, op, await apply(store, op));
    const second = c.hostViews();
    expect(second).not.toBe(first);
    expect(second.map((v) => v.id)).toEqual(first.map((v) => v.id));
    second.forEach((v, i) => (v.id === "c3" ? expect(v).not.toBe(first[i]) : expect(v).toBe(first[i])));
    expect(second.find((v) => v.id === "c3")!.allocated.vcpus).toBe(3);
    expect(first.find((v) => v.id === "c3")!.allocated.vcpus).toBe(0);
  });

  it("hostViewsSince names the places changed since a mark, and says it cannot tell after hosts came or went or too many copies", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const c = new ClusterState(store, silentLogger());
    clusters.push(c);
    await c.start();
    const run = async (op: Op) => caughtUp(c, op, await apply(store, op));
    for (const h of IDS) await run({ kind: "host", id: h, vcpus: 4, cordoned: false });
    const m0 = c.hostViewsSince(undefined);
    expect(m0.changed).toBeUndefined();
    expect(c.hostViewsSince(m0.mark).changed).toEqual(new Set());
    await run({ kind: "alloc", id: "c3", vcpus: 1 });
    const m1 = c.hostViewsSince(m0.mark);
    expect(m1.changed).toEqual(new Set([c.hostViewIndex("c3")]));
    await run({ kind: "alive", id: "a1" });
    c.hostViews(); // another reader's copy in between
    await run({ kind: "alloc", id: "b2", vcpus: 2 });
    expect(c.hostViewsSince(m1.mark).changed).toEqual(new Set([c.hostViewIndex("a1"), c.hostViewIndex("b2")]));
    // A host added: another list.
    const m2 = c.hostViewsSince(undefined).mark;
    await run({ kind: "host", id: "e5", vcpus: 4, cordoned: false });
    expect(c.hostViewsSince(m2).changed).toBeUndefined();
    // More copies since the mark than are remembered.
    const m3 = c.hostViewsSince(undefined).mark;
    for (let i = 0; i < 70; i++) {
      await run({ kind: "alloc", id: "d4", vcpus: i % 8 });
      c.hostViews();
    }
    expect(c.hostViewsSince(m3).changed).toBeUndefined();
  });
});
