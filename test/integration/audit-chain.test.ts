// The audit log's hash chain on real etcd: events written by VM, network,
// token and user changes (each in its change's transaction) verify; an event
// edited or deleted directly in etcd is found by `noidctl audit verify`;
// retention trimming keeps the rest verifiable.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../cli/program.js";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { Role, type NoidClient } from "../../sdk/index.js";
import { createEtcdStore } from "../../coordinator/store/index.js";
import type { Store } from "../../coordinator/store/store.js";
import { AuditChainStore } from "../../coordinator/auth/audit-chain-store.js";
import { AuditLog } from "../../coordinator/audit-log.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec, enc } from "../../coordinator/state/codec.js";
import { startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

describe("audit hash chain", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let raw: Store;
  let dir: string;
  const prefix = `/chain${Math.random().toString(16).slice(2, 8)}/`;

  const verifyCli = async () => {
    let out = "";
    let err = "";
    const code = await run(["--server", c.address, "--insecure", "audit", "verify"], {
      env: { HOME: dir, NOID_CONFIG: join(dir, "config.toml"), NOID_TOKEN: c.adminToken },
      io: { stdout: (s) => void (out += s), stderr: (s) => void (err += s), readStdin: async () => "", isTTY: false, cwd: dir },
    });
    return { code, out, err };
  };

  beforeAll(async () => {
    c = await startTestCoordinator({ etcd: { prefix } });
    admin = c.client();
    // A client of etcd that bypasses the coordinator: what an attacker with etcd access could do.
    raw = await createEtcdStore({ endpoints: c.endpoints, prefix });
    dir = mkdtempSync(join(tmpdir(), "noid-chain-"));
    await admin.createToken({ name: "alice", role: Role.ROLE_USER });
    await admin.createVm("web", { vcpus: 1, memoryMb: 128 }).catch(() => undefined); // no host yet: kept PENDING, still recorded
    await admin.createNetwork("lab", { cidr: "10.77.0.0/24" });
    await Promise.all(Array.from({ length: 5 }, (_, i) => admin.createUser({ name: `u${i}`, role: Role.ROLE_USER, password: "a long password" })));
    await admin.rotateToken("alice");
    await admin.destroyVm("web");
  });
  afterAll(async () => {
    await raw?.close();
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const events = async () => (await raw.list(keys.auditPrefix)).kvs.map((kv) => ({ kv, e: dec(AuditEvent, kv.value) })).sort((a, b) => (a.e.seq ?? 0) - (b.e.seq ?? 0));

  it("links every event, whichever path wrote it, into one verifiable chain", async () => {
    const all = await events();
    expect(new Set(all.map((x) => x.e.event))).toEqual(new Set(["token.create", "vm.create", "network.create", "user.create", "token.rotate", "vm.destroy"]));
    expect(all.map((x) => x.e.seq)).toEqual(all.map((_, i) => i + 1));
    const v = await admin.verifyAuditChain();
    expect(v).toMatchObject({ ok: true, checked: all.length, firstSeq: 1, lastSeq: all.length, headHash: all.at(-1)!.e.hash });
    const cli = await verifyCli();
    expect(cli.code).toBe(0);
    expect(cli.out).toBe(`audit chain intact: ${all.length} events (seq 1..${all.length}), head ${v.headHash}\n`);
  });

  it("finds an event edited in etcd, and passes again once it is restored", async () => {
    const all = await events();
    const victim = all[3]!;
    await raw.put(victim.kv.key, enc(AuditEvent, { ...victim.e, user: "nobody", detail: "nothing to see" }));
    const cli = await verifyCli();
    expect(cli.code).toBe(1);
    expect(cli.out).toBe(`audit chain BROKEN at event 4 (${victim.e.id}): event 4 was altered: its content does not match its hash\n`);
    await raw.put(victim.kv.key, victim.kv.value);
    expect((await verifyCli()).code).toBe(0);
  });

  it("finds a deleted event and a deleted newest event", async () => {
    const all = await events();
    await raw.delete(all[2]!.kv.key);
    expect(await admin.verifyAuditChain()).toMatchObject({ ok: false, brokenSeq: 4, reason: "events 3..3 are missing before event 4" });
    await raw.put(all[2]!.kv.key, all[2]!.kv.value);
    await raw.delete(all.at(-1)!.kv.key);
    const v = await admin.verifyAuditChain();
    expect(v.ok).toBe(false);
    expect(v.reason).toMatch(/newer events were removed/);
    await raw.put(all.at(-1)!.kv.key, all.at(-1)!.kv.value);
    expect((await admin.verifyAuditChain()).ok).toBe(true);
  });

  it("stays verifiable after retention trims the oldest events, and only admins may verify", async () => {
    const before = (await events()).length;
    const log = new AuditLog(new AuditChainStore(raw), { now: () => new Date() }, true);
    expect(await log.trim(before), "at its bound: nothing to trim").toBe(0);
    expect((await events()).length).toBe(before);
    expect(await log.trim(4)).toBe(before - 4);
    await admin.createToken({ name: "after-trim", role: Role.ROLE_READ_ONLY });
    const v = await admin.verifyAuditChain();
    expect(v).toMatchObject({ ok: true, checked: 5, firstSeq: before - 3, lastSeq: before + 1 });
    // Deleting the oldest retained event is caught through the anchor.
    const oldest = (await events())[0]!;
    await raw.delete(oldest.kv.key);
    expect((await admin.verifyAuditChain()).ok).toBe(false);
    await raw.put(oldest.kv.key, oldest.kv.value);
    const viewer = c.client((await admin.createToken({ name: "viewer", role: Role.ROLE_READ_ONLY })).secret);
    await expect(viewer.verifyAuditChain()).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
  });
});
