// The guard around etcd3's watch multiplexer (coordinator/store/etcd3-watch-guard.ts):
// a response for a watcher the client does not know no longer throws out of
// the stream handler (which ended the coordinator under the 1,000-host
// benchmark), and after the watch stream breaks and is re-opened, watches
// still deliver every change once and in order.
import { EventEmitter } from "node:events";
import { randomUUID } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createEtcdStore, type EtcdStore, type WatchEvent } from "../../coordinator/store/index.js";
import { deadAfterCancel, watchGuardStats } from "../../coordinator/store/etcd3-watch-guard.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

let etcd: TestEtcd;
let store: EtcdStore;

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/guard-${randomUUID()}/` });
});
afterAll(async () => {
  await store?.close();
  await etcd?.stop();
});

interface Manager {
  watchers: { id: string | null }[];
  handleResponse(res: unknown): void;
  handleCreatedResponse(res: unknown): void;
  handleError(err: Error): void;
}
const managerOf = (s: EtcdStore): Manager => (s as unknown as { client: { watchManager: Manager } }).client.watchManager;

async function until(cond: () => boolean, what: string, ms = 15_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("etcd3 watch guard", () => {
  it("drops responses for unknown watchers instead of throwing, and a broken stream resumes every watch without loss or duplicates", async () => {
    const seen: string[] = [];
    const w = await store.watch("k/", {
      onEvents: (evs: WatchEvent[]) => {
        for (const e of evs) if (e.type === "put") seen.push(Buffer.from(e.kv.value).toString());
      },
    });
    try {
      for (let i = 0; i < 5; i++) await store.put(`k/${i}`, Buffer.from(String(i)));
      await until(() => seen.length === 5, "the first 5 events");

      const m = managerOf(store);
      const before = watchGuardStats.droppedResponses;
      // What etcd3 1.1.2 threw on (uncaught, from the stream's data handler).
      expect(() => m.handleResponse({ watch_id: "98765", canceled: false, events: [], header: {} })).not.toThrow();
      expect(() => m.handleCreatedResponse({ watch_id: "98766", created: true, canceled: false, header: {} })).not.toThrow();
      expect(watchGuardStats.droppedResponses).toBe(before + 2);

      // Break the stream (as a keepalive timeout does) while writes go on.
      const writes = (async () => {
        for (let i = 5; i < 40; i++) await store.put(`k/${i}`, Buffer.from(String(i)));
      })();
      m.handleError(new Error("test: stream broken"));
      await writes;
      await until(() => seen.length >= 40, "all 40 events after the reconnect");
      await new Promise((r) => setTimeout(r, 300));
      expect(seen).toEqual(Array.from({ length: 40 }, (_, i) => String(i)));
      expect(m.watchers.every((x) => x.id !== null)).toBe(true);
    } finally {
      await w.cancel();
    }
  });

  it("a cancelled stream's later responses reach no listener, its error only while it is still current", () => {
    const s = Object.assign(new EventEmitter(), { cancel: () => undefined });
    const got: unknown[] = [];
    let current = false;
    deadAfterCancel(s as never as { on: EventEmitter["on"]; cancel(): void } & EventEmitter, () => current);
    s.on("data", (x) => got.push(x));
    s.on("error", (e) => got.push(e));
    s.emit("data", 1);
    s.cancel();
    s.emit("data", 2);
    s.emit("error", new Error("CANCELLED"));
    expect(got).toEqual([1]);
    current = true;
    const err = new Error("CANCELLED, still current");
    s.emit("error", err);
    s.emit("data", 3);
    expect(got).toEqual([1, err]);
  });
});
