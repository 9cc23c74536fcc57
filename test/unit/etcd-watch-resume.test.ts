// Where a watch resumes after its stream breaks: from the revision after the
// last event it received, whatever the response headers say. Driven through
// etcd3's own Watcher (its listeners move the resume point to header + 1 on
// every response and on "created"), with a stand-in for its stream manager.
import { Watcher as Etcd3Watcher } from "etcd3";
import { describe, expect, it } from "vitest";
import { EtcdWatch } from "../../coordinator/store/etcd-store.js";
import type { KeyValue, WatchEvent } from "../../coordinator/store/store.js";

function setup(from: number) {
  const manager = { attach: () => undefined, detach: () => Promise.resolve() };
  const namespace = { unprefix: (k: Buffer) => k };
  const raw = new (Etcd3Watcher as unknown as new (m: unknown, n: unknown, r: unknown) => Etcd3Watcher)(manager, namespace, { key: Buffer.from("p/"), start_revision: String(from) });
  const got: number[] = [];
  const toKv = (kv: { key: Buffer; value: Buffer; mod_revision: string; create_revision: string }): KeyValue => ({
    key: kv.key.toString(),
    value: kv.value,
    modRevision: Number(kv.mod_revision),
    createRevision: Number(kv.create_revision),
    version: 1,
    lease: 0,
  });
  const w = new EtcdWatch(raw, { onEvents: (evs: WatchEvent[]) => void got.push(...evs.map((e) => (e.type === "put" ? e.kv.modRevision : e.modRevision))) }, toKv as never, "p/", 1000, () => undefined, from);
  const start = () => (raw as unknown as { request: { start_revision: string } }).request.start_revision;
  const header = (revision: number) => ({ revision: String(revision) });
  const ev = (rev: number, type = "Put") => ({ type, kv: { key: Buffer.from(`p/${rev}`), value: Buffer.from("v"), mod_revision: String(rev), create_revision: String(rev) } });
  const connected = (rev: number) => raw.emit("connected", { header: header(rev), created: true, events: [] });
  const data = (rev: number, revs: number[]) => raw.emit("data", { header: header(rev), events: revs.map((r) => ev(r)) });
  return { w, got, start, connected, data, raw };
}

const tick = () => new Promise((r) => setImmediate(r));

describe("etcd watch resume point", () => {
  it("a re-attached watch's 'created' does not move it past the events still to come", async () => {
    const s = setup(10);
    s.connected(50); // etcd is at 50; the events from 10 on are sent after this
    expect(s.start()).toBe("10");
    s.data(50, [12, 13]);
    await tick();
    expect(s.got).toEqual([12, 13]);
    expect(s.start()).toBe("14");
    // The stream breaks and is attached again: still from 14, not from 51.
    s.connected(60);
    expect(s.start()).toBe("14");
  });

  it("a response whose header is ahead of its events (a lagging watch catching up) resumes after its last event", async () => {
    const s = setup(1);
    s.connected(5);
    s.data(900, [5, 6, 7]);
    await tick();
    expect(s.start()).toBe("8");
  });

  it("a 'created' from a member behind us does not move it back, and a replay is not delivered twice", async () => {
    const s = setup(1);
    s.connected(1);
    s.data(20, [18, 20]);
    await tick();
    s.connected(9); // a member still catching up
    expect(s.start()).toBe("21");
    s.data(25, [18, 20, 24]); // replayed from further back
    await tick();
    expect(s.got).toEqual([18, 20, 24]);
    expect(s.start()).toBe("25");
  });

  it("a progress notification (sent once every event up to its revision was) moves it to that revision and delivers nothing", async () => {
    const s = setup(3);
    s.connected(3);
    s.data(100, []);
    await tick();
    expect(s.got).toEqual([]);
    expect(s.start()).toBe("101");
    s.data(120, [101]);
    await tick();
    expect(s.got).toEqual([101]);
    expect(s.start()).toBe("102");
  });
});
