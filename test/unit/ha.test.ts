// Leader election and fencing on the in-memory store (same contract as etcd),
// and the coordinator address lists of the SDK and agent.
import { afterEach, describe, expect, it } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { FencedStore, LEADER_KEY, LeaderElector } from "../../coordinator/ha/leader.js";
import { MemoryStore, type Store } from "../../coordinator/store/index.js";
import { parseAgentConfig } from "../../agent/config.js";
import { coordinatorTarget, parseHostPort, splitAddresses } from "../../sdk/targets.js";
import { eventually } from "../helpers/coordinator.js";

const stops: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const s of stops.splice(0)) await s();
});

function elector(store: Store, nodeId: string, events: string[]): LeaderElector {
  const e = new LeaderElector({
    store,
    nodeId,
    leaseSeconds: 2,
    logger: silentLogger(),
    onElected: ({ fence }) => void events.push(`${nodeId} elected ${fence}`),
    onDeposed: (why) => void events.push(`${nodeId} deposed: ${why}`),
  });
  stops.push(() => e.stop());
  return e;
}

describe("leader election", () => {
  it("elects one of several replicas and hands over when the leader stops", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 50 });
    const events: string[] = [];
    const es = ["a", "b", "c"].map((id) => elector(store, id, events));
    await Promise.all(es.map((e) => e.start()));
    const first = await eventually(() => es.find((e) => e.isLeader()), 5000, "a leader");
    expect(es.filter((e) => e.isLeader())).toHaveLength(1);
    await first.stop(); // revokes its lease: the next one takes over without waiting for the TTL
    const second = await eventually(() => es.find((e) => e !== first && e.isLeader()), 5000, "a new leader");
    expect(second.status().fence).toBeGreaterThan(0);
    expect(es.filter((e) => e.isLeader())).toEqual([second]);
  });

  it("a replica whose lease lapses steps down by itself", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 50 });
    const events: string[] = [];
    const a = elector(store, "a", events);
    await a.start();
    await eventually(() => a.isLeader(), 5000, "a leads");
    a.suspendRenewal(); // watchdog still on: like a process cut off from etcd
    await eventually(() => !a.isLeader(), 5000, "a steps down");
    expect(events.some((e) => e.startsWith("a deposed"))).toBe(true);
  });

  it("a restarted replica with the same node id takes its own key back at once", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 50 });
    const events: string[] = [];
    const lease = await store.grantLease(60);
    await store.put(LEADER_KEY, Buffer.from("a"), { lease: lease.id }); // left by the previous process
    const a = elector(store, "a", events);
    await a.start();
    await eventually(() => a.isLeader(), 2000, "a leads again");
    const kv = await store.get(LEADER_KEY);
    expect(a.status().fence).toBe(kv!.createRevision); // a new key, so a new fence
  });
});

describe("fenced store", () => {
  it("refuses writes once the leader key was recreated, and reports it", async () => {
    const store = new MemoryStore({ sweepIntervalMs: 0 });
    const r = await store.txn([{ key: LEADER_KEY, target: "create", op: "==", value: 0 }], [{ type: "put", key: LEADER_KEY, value: Buffer.from("a") }]);
    const deposed: string[] = [];
    const fenced = new FencedStore(store, r.revision, () => true, (why) => deposed.push(why));
    await fenced.put("x", Buffer.from("1"));
    expect((await store.get("x"))?.value).toEqual(new Uint8Array(Buffer.from("1")));
    // Another replica took over: the key was deleted and created again.
    await store.delete(LEADER_KEY);
    await store.put(LEADER_KEY, Buffer.from("b"));
    await expect(fenced.put("x", Buffer.from("2"))).rejects.toMatchObject({ code: "UNAVAILABLE" });
    await expect(fenced.txn([], [{ type: "delete", key: "x" }])).rejects.toMatchObject({ code: "UNAVAILABLE" });
    expect((await store.get("x"))?.value).toEqual(new Uint8Array(Buffer.from("1")));
    expect(deposed.length).toBe(2);
    // A plain conflict (the caller's own compare) is still just "not succeeded".
    const store2 = new MemoryStore({ sweepIntervalMs: 0 });
    const r2 = await store2.txn([], [{ type: "put", key: LEADER_KEY, value: Buffer.from("a") }]);
    const f2 = new FencedStore(store2, r2.revision, () => true, () => undefined);
    expect((await f2.txn([{ key: "y", target: "version", op: "==", value: 5 }], [{ type: "put", key: "y", value: Buffer.from("1") }])).succeeded).toBe(false);
    await expect(f2.txn([], [], [{ type: "delete", key: "y" }])).rejects.toMatchObject({ code: "INTERNAL" });
  });
});

describe("coordinator address lists", () => {
  it("splits, checks and builds one target for several replicas", () => {
    expect(splitAddresses("a:1, b:2,,")).toEqual(["a:1", "b:2"]);
    expect(splitAddresses(["a:1,b:2", "c:3"])).toEqual(["a:1", "b:2", "c:3"]);
    expect(parseHostPort("[::1]:7654")).toEqual({ host: "::1", port: 7654 });
    expect(parseHostPort("a:0")).toBeUndefined();
    expect(coordinatorTarget("a:7654").target).toBe("a:7654");
    expect(coordinatorTarget("unix:/run/noid.sock").target).toBe("unix:/run/noid.sock");
    const t = coordinatorTarget("a:7654,10.0.0.2:7654");
    expect(t.target).toBe("noid-list:a:7654,10.0.0.2:7654");
    expect(JSON.parse(String(t.options["grpc.service_config"]))).toEqual({ loadBalancingConfig: [{ pick_first: { shuffleAddressList: true } }] });
    expect(() => coordinatorTarget("a:7654,unix:/x.sock")).toThrow(/host:port/);
    expect(() => coordinatorTarget(" , ")).toThrow(/no coordinator/);
  });

  it("a list of replicas that are all down fails UNAVAILABLE at once (no resolve/connect spin)", async () => {
    const { connect } = await import("../../sdk/index.js");
    const { pickFreePort } = await import("../../coordinator/etcd/embedded.js");
    const [p1, p2] = [await pickFreePort(), await pickFreePort()];
    const c = connect({ address: `127.0.0.1:${p1},localhost:${p2}`, token: "a".repeat(64), insecure: true, deadlineMs: 3000, retries: 0 });
    try {
      // UNAVAILABLE, not DEADLINE_EXCEEDED: the call failed before its deadline.
      await expect(c.listVms()).rejects.toMatchObject({ code: "UNAVAILABLE" });
    } finally {
      c.close();
    }
  });

  it("the agent config takes a list or a comma string", () => {
    expect(parseAgentConfig({ coordinator: ["a:7654", "b:7654"], name: "h1" }).coordinator).toBe("a:7654,b:7654");
    expect(parseAgentConfig({ coordinator: "a:7654,b:7654", name: "h1" }).coordinator).toBe("a:7654,b:7654");
    expect(() => parseAgentConfig({ coordinator: [], name: "h1" })).toThrow(/coordinator/);
  });
});
