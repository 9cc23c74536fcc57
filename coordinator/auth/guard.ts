// The authenticator every API call goes through: refuses a source that is
// locked out for failing too often, asks the token store, and on failure
// counts it, feeds the limiter and writes a (throttled) auth.failure audit
// event. Login uses the same admit/fail pair, so password guessing is
// limited exactly like token guessing.
import type { Metadata } from "@grpc/grpc-js";
import type { Logger } from "pino";
import { isNoidError } from "../../common/errors.js";
import type { AuditInput } from "../audit-log.js";
import type { Authenticator } from "../grpc/handler.js";
import type { Principal } from "./authorize.js";
import { AuthFailure, type AuthFailureReason } from "./tokens.js";
import { AuthFailureCounter, AuditThrottle, FailureLimiter, sourceOf } from "./rate-limit.js";

export interface AuthGuardDeps {
  inner: Authenticator;
  limiter: FailureLimiter;
  counter: AuthFailureCounter;
  throttle: AuditThrottle;
  audit: (e: AuditInput) => Promise<void>;
  logger: Logger;
}

export class AuthGuard implements Authenticator {
  constructor(private readonly d: AuthGuardDeps) {}

  /** The failure counters, for the metrics exporter. */
  failures(): ReturnType<AuthFailureCounter["snapshot"]> {
    return this.d.counter.snapshot();
  }

  /** Throws UNAUTHENTICATED while `peer`'s source is locked out. */
  admit(peer: string): void {
    const src = sourceOf(peer);
    const a = this.d.limiter.admit(src);
    if (!a.allowed) {
      this.d.counter.inc("rate_limited");
      throw new AuthFailure("rate_limited", `too many failed attempts from ${src}; try again in ${Math.ceil(a.retryAfterMs / 1000)}s`);
    }
  }

  /** Records one failed attempt from `peer`. Never throws: auditing must not hide the original error. */
  async fail(peer: string, reason: AuthFailureReason, user: string, what: string): Promise<void> {
    const src = sourceOf(peer);
    this.d.counter.inc(reason);
    const locked = this.d.limiter.fail(src);
    if (locked) {
      this.d.counter.lockedOut();
      this.d.logger.warn({ source: src }, "authentication failures: source locked out");
    }
    const suppressed = this.d.throttle.pass(src);
    if (suppressed === undefined) return;
    const more = suppressed > 0 ? ` (+${suppressed} more from this source not recorded)` : "";
    await this.d.audit({
      event: "auth.failure",
      user,
      vm: "",
      host: "",
      success: false,
      detail: `${what}: ${reason}${locked ? ", source locked out" : ""}${more}`,
      peer,
    }).catch((err: unknown) => this.d.logger.warn({ err }, "writing auth.failure audit event failed"));
  }

  async authenticate(metadata: Metadata, peer: string): Promise<Principal> {
    this.admit(peer);
    try {
      return await this.d.inner.authenticate(metadata, peer);
    } catch (e) {
      if (isNoidError(e, "UNAUTHENTICATED")) {
        await this.fail(peer, e instanceof AuthFailure ? e.reason : "unknown", "", "bearer token");
      }
      throw e;
    }
  }
}
