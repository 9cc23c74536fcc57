// Host identities on a real etcd: a join token is used up exactly once even
// when many callers race for it, and the sweep forgets expired tokens and
// records of certificates past their end (and nothing else).
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { silentLogger } from "../../common/logger.js";
import { createEtcdStore, type Store } from "../../coordinator/store/index.js";
import { ClusterCa } from "../../coordinator/pki/ca.js";
import { HostIdentities } from "../../coordinator/pki/host-identity.js";
import { createHostCsr, generateKeyPair } from "../../common/x509.js";
import { startTestEtcd, type TestEtcd } from "../helpers/etcd.js";

let etcd: TestEtcd;
let store: Store;
let ca: ClusterCa;
let offsetMs = 0;
const clock = { now: () => new Date(Date.now() + offsetMs) };

beforeAll(async () => {
  etcd = await startTestEtcd();
  store = await createEtcdStore({ endpoints: etcd.endpoints, prefix: `/hi${Math.random().toString(16).slice(2, 8)}/` });
  ca = (await ClusterCa.create()).ca;
}, 60_000);
afterAll(async () => {
  await store?.close();
  await etcd?.stop();
});

describe("host identities", () => {
  it("lets exactly one of many concurrent joins use a token", async () => {
    const ids = new HostIdentities(store, clock, ca, 3600);
    const { token } = await ids.createJoinToken({ ttlSeconds: 60, hostName: "", createdBy: "admin" });
    const results = await Promise.allSettled(Array.from({ length: 8 }, (_, i) => ids.consumeJoinToken(token, `racer-${i}`)));
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    for (const r of results) if (r.status === "rejected") expect((r.reason as { code: string }).code).toBe("UNAUTHENTICATED");
  });

  it("refuses bad TTLs and host names when creating tokens", async () => {
    const ids = new HostIdentities(store, clock, ca, 3600);
    await expect(ids.createJoinToken({ ttlSeconds: 0, hostName: "", createdBy: "a" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(ids.createJoinToken({ ttlSeconds: 8 * 86_400, hostName: "", createdBy: "a" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
    await expect(ids.createJoinToken({ ttlSeconds: 60, hostName: "Not_A_Host", createdBy: "a" })).rejects.toMatchObject({ code: "INVALID_ARGUMENT" });
  });

  it("sweeps expired join tokens and certificate records, keeps live ones", async () => {
    const ids = new HostIdentities(store, clock, ca, 60);
    const short = await ids.createJoinToken({ ttlSeconds: 30, hostName: "", createdBy: "a" });
    const long = await ids.createJoinToken({ ttlSeconds: 3600, hostName: "", createdBy: "a" });
    const shortCert = await ids.issue("sweep-a", await createHostCsr("sweep-a", await generateKeyPair()));
    const longIds = new HostIdentities(store, clock, ca, 7200);
    const longCert = await longIds.issue("sweep-b", await createHostCsr("sweep-b", await generateKeyPair()));
    await ids.revokeHost("sweep-a");
    expect(await ids.isRevoked(shortCert.serial)).toBe(true);
    offsetMs = 120_000; // two minutes later
    try {
      await ids.sweep();
      expect((await store.list("join-tokens/")).kvs).toHaveLength(1);
      expect((await store.list("revoked-certs/")).kvs).toHaveLength(0);
      expect((await store.list("host-certs/")).kvs).toHaveLength(1);
      expect(await ids.isRevoked(shortCert.serial)).toBe(false); // its certificate has ended anyway
      expect(await ids.isValid(longCert.serial, "sweep-b")).toBe(true);
      await expect(ids.consumeJoinToken(short.token, "x")).rejects.toMatchObject({ code: "UNAUTHENTICATED" });
      await ids.consumeJoinToken(long.token, "y");
    } finally {
      offsetMs = 0;
    }
  });

  it("checks revocations against a watched copy: at once on the revoking replica, within the watch delay on another, and from etcd while etcd does not answer", async () => {
    const a = new HostIdentities(store, clock, ca, 3600);
    // Replica b's store has just answered (the copy is trusted) or has not (it reads etcd).
    let answering = true;
    const bStore: Store = Object.assign(Object.create(store) as Store, { answeredWithin: () => answering });
    const b = new HostIdentities(bStore, clock, ca, 3600);
    await Promise.all([a.startRevocationCache(silentLogger()), b.startRevocationCache(silentLogger())]);
    try {
      const cert = await a.issue("cached-a", await createHostCsr("cached-a", await generateKeyPair()));
      expect(await b.isRevoked(cert.serial)).toBe(false);
      // While etcd "does not answer", b reads etcd itself: the revocation is seen even before its copy has it.
      answering = false;
      const reads: string[] = [];
      const get = bStore.get.bind(bStore);
      bStore.get = async (k: string) => (reads.push(k), get(k));
      await a.revokeHost("cached-a");
      expect(await a.isRevoked(cert.serial)).toBe(true);
      expect(await b.isRevoked(cert.serial)).toBe(true);
      expect(reads).toHaveLength(1);
      // Trusted again: from the copy, no read.
      answering = true;
      await vi.waitFor(async () => expect(await b.isRevoked(cert.serial)).toBe(true), { timeout: 5000 });
      expect(reads).toHaveLength(1);
    } finally {
      await Promise.all([a.stopRevocationCache(), b.stopRevocationCache()]);
    }
  });
});
