// TOTP secrets are sealed in etcd with the coordinator's secrets.key (AES-256-GCM):
// the etcd value never holds the secret, login with a code still works, a
// record from before encryption is resealed on first read, and a replica
// with another key refuses clearly instead of wiping 2FA.
import { statSync } from "node:fs";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Role, NoidApiError, type NoidClient } from "../../sdk/index.js";
import { UserRecord } from "../../gen/noid/v1/records.js";
import { base32Decode, totp } from "../../coordinator/users/totp.js";
import { SECRETS_KEY_FILE } from "../../coordinator/users/secret-box.js";
import { startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

const PW = "root password 42";

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

describe("TOTP secrets at rest", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let anon: NoidClient;
  const etcdHolds = async (needle: string | Buffer) =>
    (await c.handle.store.list("")).kvs.filter((kv) => Buffer.from(kv.value).includes(needle)).map((kv) => kv.key);

  let rootKey: Buffer;
  const PREFIX = `/totp${process.pid}/`;
  beforeAll(async () => {
    c = await startTestCoordinator({ etcd: { prefix: PREFIX } });
    admin = c.client();
    anon = c.client("", { retries: 0 });
  });
  afterAll(async () => c?.stop());

  it("creates secrets.key with mode 0600 on first start", () => {
    const st = statSync(join(c.stateDir, SECRETS_KEY_FILE));
    expect(st.mode & 0o777).toBe(0o600);
  });

  it("keeps the pending and the confirmed secret out of etcd, and logs in with a code", async () => {
    await admin.createUser({ name: "root", role: Role.ROLE_ADMIN, password: PW });
    const e = await admin.enrollTotp("root");
    const key = base32Decode(e.secret)!;
    rootKey = key;
    expect(await etcdHolds(e.secret)).toEqual([]);
    expect(await etcdHolds(key)).toEqual([]);
    await admin.confirmTotp(totp(key, Date.now()), "root");
    expect(await etcdHolds(e.secret)).toEqual([]);
    const raw = UserRecord.decode((await c.handle.store.get("users/root"))!.value);
    expect(raw.totpSecret).toMatch(/^aes256gcm:v1:[0-9a-f]{8}:/);
    const s = await anon.login({ user: "root", password: PW, totpCode: totp(key, Date.now() + 30_000) });
    expect((await c.client(s.token).whoAmI()).user).toBe("root");
    expect((await failure(anon.login({ user: "root", password: PW, totpCode: "000000" }))).code).toBe("UNAUTHENTICATED");
    expect(await etcdHolds(e.secret)).toEqual([]);
  });

  it("reseals a plaintext secret written before encryption on its first read, and login keeps working", async () => {
    await admin.createUser({ name: "legacy", role: Role.ROLE_USER, password: PW });
    const e = await admin.enrollTotp("legacy");
    const key = base32Decode(e.secret)!;
    await admin.confirmTotp(totp(key, Date.now()), "legacy");
    // Rewind the record to what an older coordinator wrote: the base32 secret in plaintext.
    const kv = (await c.handle.store.get("users/legacy"))!;
    const rec = UserRecord.decode(kv.value);
    await c.handle.store.put("users/legacy", UserRecord.encode({ ...rec, totpSecret: e.secret, totpLastStep: 0 }).finish());
    expect(await etcdHolds(e.secret)).toEqual(["users/legacy"]);
    const s = await anon.login({ user: "legacy", password: PW, totpCode: totp(key, Date.now()) });
    expect(s.token).toMatch(/^[0-9a-f]{64}$/);
    expect(await etcdHolds(e.secret)).toEqual([]);
    expect(UserRecord.decode((await c.handle.store.get("users/legacy"))!.value).totpSecret).toMatch(/^aes256gcm:v1:/);
    await anon.login({ user: "legacy", password: PW, totpCode: totp(key, Date.now() + 30_000) });
  });

  it("a replica with another secrets.key names the key file instead of dropping 2FA", async () => {
    // A second coordinator on the same etcd and prefix, with its own (fresh) state dir and key.
    const { resolveConfig } = await import("../../coordinator/config.js");
    const { startCoordinator } = await import("../../coordinator/server.js");
    const { silentLogger } = await import("../../common/logger.js");
    const { mkdtempSync, rmSync, copyFileSync } = await import("node:fs");
    const { tmpdir } = await import("node:os");
    const dir = mkdtempSync(join(tmpdir(), "noid-coord2-"));
    copyFileSync(join(c.stateDir, "admin.token"), join(dir, "admin.token"));
    const cfg = resolveConfig({
      server: { listen: "127.0.0.1:0", insecure: true },
      state_dir: dir,
      etcd: { endpoints: c.endpoints, prefix: PREFIX },
      logging: { level: "silent" },
    });
    const sealedBefore = (await c.handle.store.get("users/root"))!.value;
    const h2 = await startCoordinator({ config: cfg, logger: silentLogger() });
    try {
      const { connect } = await import("../../sdk/index.js");
      const other = connect({ address: h2.address, token: c.adminToken, insecure: true, retries: 0 });
      const anon2 = connect({ address: h2.address, token: "", insecure: true, retries: 0 });
      // Wrong password: the usual answer, nothing about keys.
      expect((await failure(anon2.login({ user: "root", password: "wrong password!", totpCode: "123456" }))).code).toBe("UNAUTHENTICATED");
      const err = await failure(anon2.login({ user: "root", password: PW, totpCode: "123456" }));
      expect(err.code).toBe("FAILED_PRECONDITION");
      expect(err.message).toMatch(/secrets\.key/);
      // A password change through that replica is refused rather than writing the record without its secret.
      expect((await failure(other.setPassword({ user: "root", newPassword: "another password 1" }))).code).toBe("FAILED_PRECONDITION");
      other.close();
      anon2.close();
    } finally {
      await h2.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    // The record is untouched, and the first replica still opens it.
    expect(Buffer.from((await c.handle.store.get("users/root"))!.value).equals(Buffer.from(sealedBefore))).toBe(true);
    expect((await admin.listUsers()).find((u) => u.name === "root")?.totpEnabled).toBe(true);
    expect(rootKey.length).toBeGreaterThan(0);
  });
});
