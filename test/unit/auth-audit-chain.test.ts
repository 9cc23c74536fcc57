// The audit hash chain: pure linking and verification, the chain store on the
// in-memory twin (same Store contract as etcd), and retention with an anchor.
import { afterEach, describe, expect, it } from "vitest";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { GENESIS, eventHash, linkEvents, verifyChain } from "../../coordinator/auth/audit-chain.js";
import { AuditChainStore, chainKeys, headOf } from "../../coordinator/auth/audit-chain-store.js";
import { AuditLog, auditPut } from "../../coordinator/audit-log.js";
import { MemoryStore } from "../../coordinator/store/memory-store.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec, enc } from "../../coordinator/state/codec.js";

const ev = (i: number): AuditEvent => ({
  id: `e${i}`,
  time: new Date(1_700_000_000_000 + i),
  event: "vm.create",
  user: "alice",
  vm: `vm${i}`,
  host: "",
  success: true,
  detail: "",
  peer: "ipv4:127.0.0.1:1",
});

describe("hash chain (pure)", () => {
  const { events, head } = linkEvents(GENESIS, [1, 2, 3, 4].map(ev));

  it("links each event to the previous one and verifies", () => {
    expect(events.map((e) => e.seq)).toEqual([1, 2, 3, 4]);
    expect(events[0]!.prevHash).toBe("");
    expect(events[2]!.prevHash).toBe(events[1]!.hash);
    expect(head).toEqual({ seq: 4, hash: events[3]!.hash });
    expect(verifyChain({ anchor: GENESIS, head, events })).toMatchObject({ ok: true, checked: 4, firstSeq: 1, lastSeq: 4 });
  });

  it("finds an edited event, even one whose hash was recomputed", () => {
    const edited = events.map((e) => (e.seq === 2 ? { ...e, user: "mallory" } : e));
    expect(verifyChain({ anchor: GENESIS, head, events: edited })).toMatchObject({ ok: false, brokenSeq: 2, reason: expect.stringMatching(/altered/) });
    const rehashed = events.map((e) => (e.seq === 2 ? { ...e, user: "mallory", hash: eventHash({ ...e, user: "mallory", hash: "" }) } : e));
    expect(verifyChain({ anchor: GENESIS, head, events: rehashed })).toMatchObject({ ok: false, brokenSeq: 3 });
  });

  it("finds deleted events in the middle, at the start and at the end", () => {
    expect(verifyChain({ anchor: GENESIS, head, events: events.filter((e) => e.seq !== 3) })).toMatchObject({ ok: false, brokenSeq: 4, reason: expect.stringMatching(/missing/) });
    expect(verifyChain({ anchor: GENESIS, head, events: events.slice(1) })).toMatchObject({ ok: false, brokenSeq: 2 });
    expect(verifyChain({ anchor: GENESIS, head, events: events.slice(0, 3) })).toMatchObject({ ok: false, reason: expect.stringMatching(/newer events were removed/) });
  });

  it("finds an unlinked event and accepts a trimmed log with its anchor", () => {
    expect(verifyChain({ anchor: GENESIS, head, events: [...events, { ...ev(9), seq: 0 }] })).toMatchObject({ ok: false, reason: expect.stringMatching(/not linked/) });
    const anchor = { seq: 2, hash: events[1]!.hash! };
    expect(verifyChain({ anchor, head, events: events.slice(2) })).toMatchObject({ ok: true, checked: 2, firstSeq: 3 });
    expect(verifyChain({ anchor: { seq: 2, hash: "0".repeat(64) }, head, events: events.slice(2) }).ok).toBe(false);
  });
});

describe("AuditChainStore and AuditLog", () => {
  const stores: MemoryStore[] = [];
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close();
  });
  const setup = () => {
    const raw = new MemoryStore({ sweepIntervalMs: 0 });
    stores.push(raw);
    const store = new AuditChainStore(raw);
    const log = new AuditLog(store, { now: () => new Date() }, true);
    return { raw, store, log };
  };

  it("links events written in other transactions, keeps the caller's compares, and serializes concurrent writers", async () => {
    const { raw, store, log } = setup();
    const r = await store.txn([{ key: "vms/x", target: "create", op: "==", value: 0 }], [{ type: "put", key: "vms/x", value: Buffer.from("1") }, auditPut({ ...ev(1) }, new Date())]);
    expect(r.succeeded).toBe(true);
    // The caller's compare fails: nothing is written, the chain does not move, the caller sees the failure.
    const lost = await store.txn([{ key: "vms/x", target: "create", op: "==", value: 0 }], [auditPut({ ...ev(2) }, new Date())]);
    expect(lost.succeeded).toBe(false);
    await Promise.all(Array.from({ length: 20 }, (_, i) => log.write({ ...ev(i), event: "token.create" })));
    await store.put(keys.audit("direct-put"), enc(AuditEvent, { ...ev(99), seq: 0 }));
    const v = await log.verify();
    expect(v).toMatchObject({ ok: true, checked: 22, lastSeq: 22 });
    expect(headOf(await raw.get(chainKeys.head)).seq).toBe(22);
    expect((await log.list({ limit: 1 }))[0]!.seq).toBe(22);
  });

  it("detects an event edited or deleted behind its back, and retention keeps the rest verifiable", async () => {
    const { raw, log } = setup();
    for (let i = 0; i < 30; i++) await log.write(ev(i));
    expect(await log.trim(12)).toBe(18);
    expect(await log.verify()).toMatchObject({ ok: true, checked: 12, firstSeq: 19, lastSeq: 30 });
    // In chain order: keys sort by time, and events written within one millisecond sort by their random part.
    const kvs = (await raw.list(keys.auditPrefix)).kvs.sort((a, b) => (dec(AuditEvent, a.value).seq ?? 0) - (dec(AuditEvent, b.value).seq ?? 0));
    const victim = kvs[5]!;
    const e = dec(AuditEvent, victim.value);
    await raw.put(victim.key, enc(AuditEvent, { ...e, detail: "nothing happened" }));
    expect(await log.verify()).toMatchObject({ ok: false, brokenSeq: e.seq });
    await raw.put(victim.key, victim.value);
    expect((await log.verify()).ok).toBe(true);
    await raw.delete(kvs[7]!.key);
    expect(await log.verify()).toMatchObject({ ok: false, reason: expect.stringMatching(/missing/) });
  });
});
