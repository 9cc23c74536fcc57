// UserService: users, passwords (argon2), TOTP 2FA, login sessions and SSH
// keys. Passwords and TOTP secrets never reach a log or an audit event; only
// the password's hash is stored. Login is the one anonymous RPC: it goes
// through the same failure limiter as bearer tokens.
import { randomBytes } from "node:crypto";
import { Role } from "../../gen/noid/v1/auth.js";
import { UserRecord, type SshKeyRecord } from "../../gen/noid/v1/records.js";
import type { SshKey, User, UserServiceServer } from "../../gen/noid/v1/user.js";
import { denied, invalid, isNoidError, notFound, precondition } from "../../common/errors.js";
import { checkName, isDnsLabel } from "../../common/names.js";
import { authorize, roleName, type Action, type Principal } from "../auth/authorize.js";
import type { AuthGuard } from "../auth/guard.js";
import { AuthFailure, type TokenStore } from "../auth/tokens.js";
import { anonymous, unary, type HandlerDeps } from "../grpc/handler.js";
import { auditPut } from "../audit-log.js";
import { enc } from "../state/codec.js";
import type { Op } from "../store/store.js";
import { checkPassword, dummyHash, generatePassword, hashPassword, verifyPassword } from "../users/password.js";
import { fingerprintId, parseSshKey } from "../users/ssh-key.js";
import { base32Decode, newTotpSecret, otpauthUri, verifyTotp } from "../users/totp.js";
import { userKeys, type StoredUser, type UserRepo } from "../users/user-repo.js";

export interface UserServiceDeps extends HandlerDeps {
  users: UserRepo;
  tokens: TokenStore;
  guard: AuthGuard;
  clock: { now(): Date };
  sessionTtlSeconds: number;
  /** Issuer shown in authenticator apps. */
  totpIssuer: string;
}

/** One message for every login failure: it does not say whether the user exists or which factor was wrong. */
const LOGIN_FAILED = "invalid user name, password or TOTP code";

const ROLES = [Role.ROLE_ADMIN, Role.ROLE_USER, Role.ROLE_READ_ONLY];

export function userView(r: UserRecord): User {
  return { name: r.name, role: r.role, createdAt: r.createdAt, passwordChangedAt: r.passwordChangedAt, totpEnabled: r.totpSecret !== "" };
}

export function sshKeyView(r: SshKeyRecord): SshKey {
  return { fingerprint: r.fingerprint, type: r.type, comment: r.comment, publicKey: r.publicKey, addedAt: r.addedAt };
}

function allow(p: Principal, action: Action, owner?: string): void {
  const v = authorize(p, action, owner);
  if (!v.allowed) throw denied(v.reason);
}

export function userService(d: UserServiceDeps): UserServiceServer {
  let dummy: Promise<string> | undefined;
  /** The user a self-service call is about: the caller unless `user` names another (admins only). */
  const target = (p: Principal, user: string, action: Action): string => {
    const name = user ? checkName("user", user) : p.user;
    allow(p, action, name);
    return name;
  };
  const load = async (name: string): Promise<StoredUser> => {
    const u = await d.users.get(name);
    if (!u) throw notFound(`user "${name}"`);
    return u;
  };

  return {
    createUser: unary(d, "CreateUser", async (req, ctx) => {
      allow(ctx.principal, "user.create");
      const name = checkName("name", req.name);
      if (!ROLES.includes(req.role)) throw invalid("role", `must be admin, user or read-only (got ${req.role})`);
      const passwordHash = await hashPassword(checkPassword("password", req.password));
      const now = d.clock.now();
      const record: UserRecord = {
        name,
        role: req.role,
        passwordHash,
        createdAt: now,
        passwordChangedAt: now,
        totpSecret: "",
        totpPendingSecret: "",
        totpLastStep: 0,
      };
      await d.users.create(record, { event: "user.create", user: ctx.principal.user, detail: `user ${name} role ${roleName(req.role)}`, peer: ctx.peer });
      return { user: userView(record) };
    }),

    listUsers: unary(d, "ListUsers", async (_req, ctx) => {
      allow(ctx.principal, "user.list");
      return { users: (await d.users.list()).map(userView).sort((a, b) => a.name.localeCompare(b.name)) };
    }),

    deleteUser: unary(d, "DeleteUser", async (req, ctx) => {
      allow(ctx.principal, "user.delete");
      const name = checkName("name", req.name);
      const cur = await load(name);
      // The user's sessions end with it, on this replica before the call returns.
      const ends = await d.tokens.sessionDeletes(name);
      const rev = await d.users.delete(cur, { event: "user.delete", user: ctx.principal.user, detail: `user ${name}`, peer: ctx.peer }, ends);
      if (ends.length > 0) await d.tokens.settled(rev);
      return {};
    }),

    setPassword: unary(d, "SetPassword", async (req, ctx) => {
      const name = target(ctx.principal, req.user, "user.set_password");
      const next = checkPassword("new_password", req.newPassword);
      const cur = await load(name);
      // Changing one's own password needs the current one: a stolen session alone must not take over the account.
      if (name === ctx.principal.user) {
        if (!req.currentPassword) throw invalid("current_password", "is required to change your own password");
        if (!(await verifyPassword(cur.record.passwordHash, req.currentPassword))) throw denied("current_password does not match");
      }
      const rec: UserRecord = { ...cur.record, passwordHash: await hashPassword(next), passwordChangedAt: d.clock.now() };
      const ends = await d.tokens.sessionDeletes(name);
      const rev = await d.users.update(cur, rec, { event: "user.password", user: ctx.principal.user, detail: `password of ${name} changed; sessions ended`, peer: ctx.peer }, ends);
      if (ends.length > 0) await d.tokens.settled(rev);
      return {};
    }),

    rotatePassword: unary(d, "RotatePassword", async (req, ctx) => {
      const name = target(ctx.principal, req.user, "user.rotate_password");
      const cur = await load(name);
      const password = generatePassword();
      const rec: UserRecord = { ...cur.record, passwordHash: await hashPassword(password), passwordChangedAt: d.clock.now() };
      const ends = await d.tokens.sessionDeletes(name);
      const rev = await d.users.update(cur, rec, { event: "user.password_rotate", user: ctx.principal.user, detail: `password of ${name} rotated; sessions ended`, peer: ctx.peer }, ends);
      if (ends.length > 0) await d.tokens.settled(rev);
      return { password };
    }),

    enrollTotp: unary(d, "EnrollTotp", async (req, ctx) => {
      const name = target(ctx.principal, req.user, "user.enroll_totp");
      const cur = await load(name);
      const secret = newTotpSecret();
      // Pending until confirmed: an unconfirmed secret never gates a login, so a typo cannot lock the user out.
      await d.users.update(cur, { ...cur.record, totpPendingSecret: secret }, { event: "user.totp_enroll", user: ctx.principal.user, detail: `TOTP enrollment started for ${name}`, peer: ctx.peer });
      return { uri: otpauthUri(d.totpIssuer, name, secret), secret };
    }),

    confirmTotp: unary(d, "ConfirmTotp", async (req, ctx) => {
      const name = target(ctx.principal, req.user, "user.confirm_totp");
      const cur = await load(name);
      if (!cur.record.totpPendingSecret) throw precondition(`no TOTP enrollment pending for ${name}: run enroll-totp first`);
      const key = base32Decode(cur.record.totpPendingSecret)!;
      const step = verifyTotp(key, req.code.trim(), d.clock.now().getTime());
      if (step === undefined) throw invalid("code", "does not match the pending TOTP secret (check the authenticator's clock)");
      await d.users.update(
        cur,
        { ...cur.record, totpSecret: cur.record.totpPendingSecret, totpPendingSecret: "", totpLastStep: step },
        { event: "user.totp_confirm", user: ctx.principal.user, detail: `TOTP enabled for ${name}`, peer: ctx.peer },
      );
      return {};
    }),

    login: anonymous(d, "Login", async (req, ctx) => {
      d.guard.admit(ctx.peer);
      const name = isDnsLabel(req.user) ? req.user : "";
      const fail = async (reason: "bad_password" | "bad_totp"): Promise<never> => {
        await d.guard.fail(ctx.peer, reason, name, "login");
        throw new AuthFailure(reason, LOGIN_FAILED);
      };
      const cur = name ? await d.users.get(name) : undefined;
      // Verify against a throwaway hash when there is no such user: same cost, no hint.
      dummy ??= dummyHash();
      const ok = await verifyPassword(cur?.record.passwordHash ?? (await dummy), req.password);
      if (!cur || !ok) return fail("bad_password");
      if (cur.sealError) throw cur.sealError;
      const rec = cur.record;
      let step = rec.totpLastStep;
      if (rec.totpSecret) {
        const s = verifyTotp(base32Decode(rec.totpSecret)!, req.totpCode.trim(), d.clock.now().getTime());
        // A code is good once: a step at or before the last accepted one is a replay.
        if (s === undefined || s <= rec.totpLastStep) return fail("bad_totp");
        step = s;
      } else if (rec.role === Role.ROLE_ADMIN) {
        throw precondition(`admins must enroll TOTP before logging in: an admin runs "noidctl user enroll-totp ${name}" and "noidctl user confirm-totp ${name}"`);
      }
      const key = userKeys.user(name);
      const ops: Op[] = [auditPut({ event: "user.login", user: name, vm: "", host: "", success: true, detail: `session for ${name} (${roleName(rec.role)})`, peer: ctx.peer }, d.clock.now())];
      if (step !== rec.totpLastStep) ops.push({ type: "put", key, value: d.users.encode({ ...rec, totpLastStep: step }) });
      try {
        const { secret, record } = await d.tokens.create({
          name: `session-${name}-${randomBytes(4).toString("hex")}`,
          user: name,
          role: rec.role,
          ttlSeconds: d.sessionTtlSeconds,
          session: true,
          extraCompares: [{ key, target: "mod", op: "==", value: cur.modRevision }],
          extraOps: ops,
        });
        return { token: secret, expiresAt: record.expiresAt, role: rec.role };
      } catch (e) {
        // The user record moved (a concurrent login used this code, or the password changed): log in again.
        if (isNoidError(e, "CONFLICT")) return fail("bad_totp");
        throw e;
      }
    }),

    addSshKey: unary(d, "AddSshKey", async (req, ctx) => {
      const user = target(ctx.principal, req.user, "sshkey.add");
      const k = parseSshKey("public_key", req.publicKey);
      const rec: SshKeyRecord = { publicKey: k.line, type: k.type, comment: k.comment, fingerprint: k.fingerprint, addedAt: d.clock.now() };
      await d.users.addSshKey(user, k.id, rec, { event: "sshkey.add", user: ctx.principal.user, detail: `${k.type} ${k.fingerprint} for ${user}`, peer: ctx.peer });
      return { key: sshKeyView(rec) };
    }),

    listSshKeys: unary(d, "ListSshKeys", async (req, ctx) => {
      const user = target(ctx.principal, req.user, "sshkey.list");
      return { keys: (await d.users.listSshKeys(user)).map(sshKeyView) };
    }),

    removeSshKey: unary(d, "RemoveSshKey", async (req, ctx) => {
      const user = target(ctx.principal, req.user, "sshkey.remove");
      const id = fingerprintId(req.fingerprint);
      if (!id) throw invalid("fingerprint", "must look like SHA256:<43 base64 characters> (see ssh-key list)");
      await d.users.removeSshKey(user, id, req.fingerprint.trim(), { event: "sshkey.remove", user: ctx.principal.user, detail: `${req.fingerprint.trim()} of ${user}`, peer: ctx.peer });
      return {};
    }),
  };
}
