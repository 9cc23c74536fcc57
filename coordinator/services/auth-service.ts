// AuthService: API tokens. Secrets are returned once and stored only hashed.
// Rotation keeps the old secret alive for a short overlap (the response says
// until when) so clients can switch without an outage.
import { Role, type AuthServiceServer, type Token } from "../../gen/noid/v1/auth.js";
import type { TokenRecord } from "../../gen/noid/v1/records.js";
import type { AuditInput } from "../audit-log.js";
import { denied, invalid, notFound } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import { authorize, type Principal } from "../auth/authorize.js";
import type { TokenStore, TokenEntry } from "../auth/tokens.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";

export interface AuthServiceDeps extends HandlerDeps {
  tokens: TokenStore;
  audit: (e: AuditInput) => Promise<void>;
}

/** Ten years: longer lifetimes are surely a mistake in units. */
const MAX_TTL_SECONDS = 10 * 365 * 24 * 3600;

export function tokenView(r: TokenRecord): Token {
  return { id: r.id, name: r.name, user: r.user, role: r.role, createdAt: r.createdAt, expiresAt: r.expiresAt, session: r.session };
}

function mayManage(p: Principal, t: TokenEntry): boolean {
  return p.role === Role.ROLE_ADMIN || t.record.user === p.user;
}

export function authService(d: AuthServiceDeps): AuthServiceServer {
  const find = async (p: Principal, ref: { id: string; name: string }) => {
    if (!ref.id && !ref.name) throw invalid("name", "is required (or give id)");
    if (ref.name) checkName("name", ref.name);
    const t = await d.tokens.find(ref.id ? { id: ref.id } : { name: ref.name });
    // Someone else's token is reported as missing: names of others' tokens do not leak.
    if (!mayManage(p, t)) throw notFound(`token "${ref.id || ref.name}"`);
    return t;
  };

  return {
    createToken: unary(d, "CreateToken", async (req, ctx) => {
      const v = authorize(ctx.principal, "token.create");
      if (!v.allowed) throw denied(v.reason);
      const name = checkName("name", req.name);
      if (![Role.ROLE_ADMIN, Role.ROLE_USER, Role.ROLE_READ_ONLY].includes(req.role)) {
        throw invalid("role", `must be admin, user or read-only (got ${req.role})`);
      }
      const user = req.user ? checkName("user", req.user) : name;
      if (req.ttlSeconds > MAX_TTL_SECONDS) throw invalid("ttl_seconds", `must be at most ${MAX_TTL_SECONDS}`);
      const { secret, record } = await d.tokens.create({ name, user, role: req.role, ttlSeconds: req.ttlSeconds });
      await d.audit({ event: "token.create", user: ctx.principal.user, vm: "", host: "", success: true, detail: `token ${name} for ${user}`, peer: ctx.peer });
      return { token: tokenView(record), secret };
    }),

    listTokens: unary(d, "ListTokens", async (_req, ctx) => {
      const v = authorize(ctx.principal, "token.list");
      if (!v.allowed) throw denied(v.reason);
      const all = await d.tokens.list();
      return {
        tokens: all
          .filter((t) => mayManage(ctx.principal, t))
          .map((t) => tokenView(t.record))
          .sort((a, b) => a.name.localeCompare(b.name)),
      };
    }),

    revokeToken: unary(d, "RevokeToken", async (req, ctx) => {
      const t = await find(ctx.principal, req);
      const v = authorize(ctx.principal, "token.revoke", t.record.user);
      if (!v.allowed) throw denied(v.reason);
      await d.tokens.revoke(t);
      await d.audit({ event: "token.revoke", user: ctx.principal.user, vm: "", host: "", success: true, detail: `token ${t.record.name}`, peer: ctx.peer });
      return {};
    }),

    rotateToken: unary(d, "RotateToken", async (req, ctx) => {
      const t = await find(ctx.principal, req);
      const v = authorize(ctx.principal, "token.rotate", t.record.user);
      if (!v.allowed) throw denied(v.reason);
      const { secret, record, oldExpiresAt } = await d.tokens.rotate(t);
      await d.audit({
        event: "token.rotate",
        user: ctx.principal.user,
        vm: "",
        host: "",
        success: true,
        detail: `token ${t.record.name}; old secret valid until ${oldExpiresAt.toISOString()}`,
        peer: ctx.peer,
      });
      return { token: tokenView(record), secret, oldSecretExpiresAt: oldExpiresAt };
    }),

    whoAmI: unary(d, "WhoAmI", async (_req, ctx) => {
      const v = authorize(ctx.principal, "whoami");
      if (!v.allowed) throw denied(v.reason);
      return {
      user: ctx.principal.user,
      role: ctx.principal.role,
      tokenName: ctx.principal.tokenName,
      };
    }),
  };
}
