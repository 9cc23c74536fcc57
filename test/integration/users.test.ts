// Users, login with TOTP, sessions, self-service, SSH keys and failed-login
// limiting, through the SDK and noidctl against a real coordinator on real etcd.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../cli/program.js";
import { AuditEvent } from "../../gen/noid/v1/audit.js";
import { Role, NoidApiError, type NoidClient } from "../../sdk/index.js";
import { base32Decode, totp } from "../../coordinator/users/totp.js";
import { keys } from "../../coordinator/state/keys.js";
import { dec } from "../../coordinator/state/codec.js";
import { startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

async function failure(p: Promise<unknown>): Promise<NoidApiError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof NoidApiError) return e;
    throw e;
  }
  throw new Error("expected the call to fail");
}

const ALICE_PW = "correct horse battery";
const ROOT_PW = "admin password 2";

describe("users and login", () => {
  let c: TestCluster;
  let admin: NoidClient;
  let anon: NoidClient;
  let dir: string;

  const cli = async (args: string[], stdin = "") => {
    let out = "";
    let err = "";
    const code = await run(args, {
      env: { HOME: join(dir, "home"), NOID_CONFIG: join(dir, "config.toml") },
      io: { stdout: (s) => void (out += s), stderr: (s) => void (err += s), readStdin: async () => stdin, isTTY: false, cwd: dir },
    });
    return { code, out, err };
  };

  beforeAll(async () => {
    c = await startTestCoordinator();
    admin = c.client();
    anon = c.client("", { retries: 0 });
    dir = mkdtempSync(join(tmpdir(), "noid-users-"));
  });
  afterAll(async () => {
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("creates users with validated fields and lists them without secrets", async () => {
    expect((await failure(admin.createUser({ name: "alice", role: Role.ROLE_USER, password: "short" }))).message).toMatch(/^password: must be at least 12/);
    expect((await failure(admin.createUser({ name: "Alice!", role: Role.ROLE_USER, password: ALICE_PW }))).message).toMatch(/^name:/);
    expect((await failure(admin.createUser({ name: "x", role: 9 as Role, password: ALICE_PW }))).message).toMatch(/^role:/);
    const u = await admin.createUser({ name: "alice", role: Role.ROLE_USER, password: ALICE_PW });
    expect(u).toMatchObject({ name: "alice", role: Role.ROLE_USER, totpEnabled: false });
    expect((await failure(admin.createUser({ name: "alice", role: Role.ROLE_USER, password: ALICE_PW }))).code).toBe("ALREADY_EXISTS");
    expect((await admin.listUsers()).map((x) => x.name)).toEqual(["alice"]);
    // Only the argon2 hash is stored: the password appears nowhere in etcd.
    const all = await c.handle.store.list("");
    expect(all.kvs.some((kv) => Buffer.from(kv.value).includes(ALICE_PW))).toBe(false);
    expect(all.kvs.some((kv) => Buffer.from(kv.value).includes("$argon2id$"))).toBe(true);
  });

  it("logs a user in with a password; the session acts as that user and is refused after a password rotation", async () => {
    expect((await failure(anon.login({ user: "alice", password: "wrong password!" }))).code).toBe("UNAUTHENTICATED");
    expect((await failure(anon.login({ user: "nobody", password: ALICE_PW }))).message).toMatch(/invalid user name, password or TOTP code/);
    const s = await anon.login({ user: "alice", password: ALICE_PW });
    expect(s.role).toBe(Role.ROLE_USER);
    const hours = (s.expiresAt!.getTime() - Date.now()) / 3_600_000;
    expect(hours).toBeGreaterThan(11.9);
    expect(hours).toBeLessThanOrEqual(12);
    const alice = c.client(s.token);
    expect((await alice.whoAmI()).user).toBe("alice");
    expect((await alice.listTokens()).map((t) => t.session)).toEqual([true]);
    expect((await failure(alice.listUsers())).code).toBe("PERMISSION_DENIED");
    expect((await failure(alice.rotatePassword("root"))).code).toBe("PERMISSION_DENIED");
    expect((await failure(alice.setPassword({ newPassword: "another long one" }))).message).toMatch(/^current_password/);
    const pw = await alice.rotatePassword();
    expect(pw).toHaveLength(24);
    expect((await failure(alice.whoAmI())).code).toBe("UNAUTHENTICATED");
    expect((await failure(anon.login({ user: "alice", password: ALICE_PW }))).code).toBe("UNAUTHENTICATED");
    const again = c.client((await anon.login({ user: "alice", password: pw })).token);
    await again.setPassword({ currentPassword: pw, newPassword: ALICE_PW });
  });

  it("requires TOTP for admins: enroll, confirm, log in once per code", async () => {
    await admin.createUser({ name: "root", role: Role.ROLE_ADMIN, password: ROOT_PW });
    expect((await failure(anon.login({ user: "root", password: ROOT_PW }))).code).toBe("FAILED_PRECONDITION");
    const e = await admin.enrollTotp("root");
    expect(e.uri).toBe(`otpauth://totp/noid:root?secret=${e.secret}&issuer=noid&algorithm=SHA1&digits=6&period=30`);
    const key = base32Decode(e.secret)!;
    expect((await failure(admin.confirmTotp("000000", "root"))).message).toMatch(/^code:/);
    await admin.confirmTotp(totp(key, Date.now()), "root");
    expect((await admin.listUsers()).find((u) => u.name === "root")?.totpEnabled).toBe(true);
    expect((await failure(anon.login({ user: "root", password: ROOT_PW }))).code).toBe("UNAUTHENTICATED");
    // The confirming code's step is used up; the next step's code is within the drift window.
    const code = totp(key, Date.now() + 30_000);
    const s = await anon.login({ user: "root", password: ROOT_PW, totpCode: code });
    expect(s.role).toBe(Role.ROLE_ADMIN);
    expect((await failure(anon.login({ user: "root", password: ROOT_PW, totpCode: code }))).code).toBe("UNAUTHENTICATED");
    expect((await c.client(s.token).whoAmI()).user).toBe("root");
  });

  it("manages per-user SSH keys: validated, listed, owner-only, removed", async () => {
    const f = join(dir, "id_ed25519");
    execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", f]);
    const line = readFileSync(`${f}.pub`, "utf8");
    const alice = c.client((await anon.login({ user: "alice", password: ALICE_PW })).token);
    const k = await alice.addSshKey(line);
    expect(k).toMatchObject({ type: "ssh-ed25519", comment: "alice@laptop" });
    expect((await failure(alice.addSshKey(line))).code).toBe("ALREADY_EXISTS");
    expect((await failure(alice.addSshKey("ssh-ed25519 AAAA"))).message).toMatch(/^public_key:/);
    expect((await alice.listSshKeys()).map((x) => x.fingerprint)).toEqual([k.fingerprint]);
    expect((await admin.listSshKeys({ user: "alice" })).length).toBe(1);
    const bob = c.client((await admin.createToken({ name: "bob", role: Role.ROLE_USER })).secret);
    expect((await failure(bob.listSshKeys({ user: "alice" }))).code).toBe("PERMISSION_DENIED");
    expect((await bob.listSshKeys()).length).toBe(0);
    expect((await failure(alice.removeSshKey("SHA256:nope"))).message).toMatch(/^fingerprint:/);
    await alice.removeSshKey(k.fingerprint);
    expect(await alice.listSshKeys()).toEqual([]);
  });

  it("noidctl login saves the session in the context; user and ssh-key commands work", async () => {
    const bad = await cli(["--server", c.address, "--insecure", "login", "alice"], "wrong password here\n");
    expect(bad.code).not.toBe(0);
    expect(bad.err.trim().split("\n")).toHaveLength(1);
    const ok = await cli(["--server", c.address, "--insecure", "login", "alice"], `${ALICE_PW}\n`);
    expect(ok.err).toBe("");
    expect(ok.out).toMatch(/^logged in as alice \(user\) until .*; context "default" saved and made current\n$/);
    expect(readFileSync(join(dir, "config.toml"), "utf8")).not.toContain(ALICE_PW);
    const me = await cli(["whoami", "-o", "json"]);
    expect(JSON.parse(me.out)).toMatchObject({ user: "alice" });
    const add = await cli(["ssh-key", "add", join(dir, "id_ed25519.pub")]);
    expect(add.out).toMatch(/^ssh-key SHA256:\S+ \(ssh-ed25519, alice@laptop\) added\n$/);
    expect((await cli(["ssh-key", "list"])).out).toMatch(/ssh-ed25519/);
    // `audit` keeps working as a command next to its `verify` subcommand.
    const own = await cli(["audit", "--limit", "3", "--event", "sshkey.add"]);
    expect(own.code).toBe(0);
    expect(own.out).toMatch(/sshkey\.add/);
    expect((await cli(["audit", "verify"])).err).toMatch(/^error: .*may not audit\.verify/);
    const denied = await cli(["user", "list"]);
    expect(denied.code).not.toBe(0);
    expect(denied.err).toMatch(/^error: .*\n$/);
    const rot = await cli(["--server", c.address, "--insecure", "login", "root", "--totp", totp(base32Decode((await admin.enrollTotp("alice")).secret)!, Date.now())], `${ROOT_PW}\n`);
    expect(rot.code).not.toBe(0); // root's code is not alice's
  });

  it("audits user changes and logins, never with the password", async () => {
    const events = await admin.listAuditEvents({ limit: 1000 });
    const names = new Set(events.map((e) => e.event));
    for (const e of ["user.create", "user.login", "user.password_rotate", "user.totp_confirm", "sshkey.add", "sshkey.remove", "auth.failure"]) expect(names).toContain(e);
    expect(JSON.stringify(events)).not.toContain(ALICE_PW);
    expect((await admin.verifyAuditChain()).ok).toBe(true);
  });

  it("rotates a token with a 60 s overlap in which both secrets work, and noidctl says so", async () => {
    const { secret: old } = await admin.createToken({ name: "ci", role: Role.ROLE_USER });
    const r = await admin.rotateToken("ci");
    const overlap = (r.oldSecretExpiresAt!.getTime() - Date.now()) / 1000;
    expect(overlap).toBeGreaterThan(55);
    expect(overlap).toBeLessThanOrEqual(60);
    expect((await c.client(old).whoAmI()).tokenName).toBe("ci");
    expect((await c.client(r.secret).whoAmI()).tokenName).toBe("ci");
    let note = "";
    const out = await run(["--server", c.address, "--insecure", "token", "rotate", "ci"], {
      env: { HOME: dir, NOID_CONFIG: join(dir, "other.toml"), NOID_TOKEN: c.adminToken },
      io: { stdout: () => undefined, stderr: (s) => void (note += s), readStdin: async () => "", isTTY: false, cwd: dir },
    });
    expect(out).toBe(0);
    expect(note).toMatch(/the old secret keeps working until \S+ \(\d+s\), then stops/);
    // Revoking ends every secret of the token at once.
    await admin.revokeToken("ci");
    expect((await failure(c.client(r.secret).whoAmI())).code).toBe("UNAUTHENTICATED");
  });

  it("locks a source out after 10 failures a minute, counts them, and audits the flood once", async () => {
    const bad = c.client("ab".repeat(32), { retries: 0 });
    let locked: NoidApiError | undefined;
    for (let i = 0; i < 12 && !locked; i++) {
      const e = await failure(bad.whoAmI());
      expect(e.code).toBe("UNAUTHENTICATED");
      if (/too many failed attempts/.test(e.message)) locked = e;
    }
    expect(locked?.message).toMatch(/too many failed attempts from 127\.0\.0\.1; try again in \d+s/);
    // Now even good credentials from this source are refused until the cool-down ends.
    expect((await failure(admin.whoAmI())).message).toMatch(/too many failed attempts/);
    expect((await failure(anon.login({ user: "alice", password: ALICE_PW }))).message).toMatch(/too many failed attempts/);
    const counts = c.handle.authFailures();
    expect(counts.lockouts).toBe(1);
    expect(counts.byReason["unknown"]).toBeGreaterThanOrEqual(1);
    expect(counts.byReason["rate_limited"]).toBeGreaterThanOrEqual(3);
    // One auth.failure event per source per minute: the flood did not become a flood of writes.
    const stored = (await c.handle.store.list(keys.auditPrefix)).kvs.map((kv) => dec(AuditEvent, kv.value));
    expect(stored.filter((e) => e.event === "auth.failure").length).toBe(1);
  });
});
