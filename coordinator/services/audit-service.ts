// AuditService: admins read everything; others read their own events.
// Verifying the hash chain is admin only (it reads every event).
import type { AuditServiceServer } from "../../gen/noid/v1/audit.js";
import { Role } from "../../gen/noid/v1/auth.js";
import { denied, invalid } from "../../common/errors.js";
import { checkName } from "../../common/names.js";
import type { AuditLog } from "../audit-log.js";
import { authorize } from "../auth/authorize.js";
import { unary, type HandlerDeps } from "../grpc/handler.js";

export function auditService(d: HandlerDeps & { audit: AuditLog }): AuditServiceServer {
  return {
    listAuditEvents: unary(d, "ListAuditEvents", async (req, ctx) => {
      const v = authorize(ctx.principal, "audit.list");
      if (!v.allowed) throw denied(v.reason);
      if (req.limit > 10_000) throw invalid("limit", "must be at most 10000");
      if (req.user) checkName("user", req.user);
      if (req.vm) checkName("vm", req.vm);
      const isAdmin = ctx.principal.role === Role.ROLE_ADMIN;
      if (!isAdmin && req.user && req.user !== ctx.principal.user) throw denied("only admins may read other users' audit events");
      const user = isAdmin ? req.user : ctx.principal.user;
      const events = await d.audit.list({ limit: req.limit || 100, user, vm: req.vm, event: req.event });
      return { events };
    }),

    verifyAuditChain: unary(d, "VerifyAuditChain", async (_req, ctx) => {
      const v = authorize(ctx.principal, "audit.verify");
      if (!v.allowed) throw denied(v.reason);
      const r = await d.audit.verify();
      return {
        ok: r.ok,
        checked: r.checked,
        firstSeq: r.firstSeq,
        lastSeq: r.lastSeq,
        headHash: r.headHash,
        brokenSeq: r.ok ? 0 : r.brokenSeq,
        brokenId: r.ok ? "" : r.brokenId,
        reason: r.ok ? "" : r.reason,
      };
    }),
  };
}
