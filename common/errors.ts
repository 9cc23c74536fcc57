// Domain errors: one code each, mapped to a gRPC status once, at the edge
// (coordinator/grpc/status.ts), and classified for retries in the SDK.

export type ErrorCode =
  | "INVALID_ARGUMENT"
  | "NOT_FOUND"
  | "ALREADY_EXISTS"
  | "PERMISSION_DENIED"
  | "UNAUTHENTICATED"
  | "RESOURCE_EXHAUSTED"
  | "FAILED_PRECONDITION"
  | "CONFLICT" // an optimistic transaction lost a race; safe to retry
  | "UNAVAILABLE"
  | "DEADLINE_EXCEEDED"
  | "UNIMPLEMENTED"
  | "INTERNAL";

export class NoidError extends Error {
  readonly code: ErrorCode;
  /** The request field at fault, for INVALID_ARGUMENT. */
  readonly field?: string;

  constructor(code: ErrorCode, message: string, opts: { cause?: unknown; field?: string } = {}) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "NoidError";
    this.code = code;
    if (opts.field !== undefined) this.field = opts.field;
  }
}

export const invalid = (field: string, why: string): NoidError =>
  new NoidError("INVALID_ARGUMENT", `${field}: ${why}`, { field });
export const notFound = (what: string): NoidError => new NoidError("NOT_FOUND", `${what} not found`);
export const alreadyExists = (what: string): NoidError => new NoidError("ALREADY_EXISTS", `${what} already exists`);
export const denied = (why: string): NoidError => new NoidError("PERMISSION_DENIED", why);
export const exhausted = (why: string): NoidError => new NoidError("RESOURCE_EXHAUSTED", why);
export const precondition = (why: string): NoidError => new NoidError("FAILED_PRECONDITION", why);

export function isNoidError(e: unknown, code?: ErrorCode): e is NoidError {
  return e instanceof NoidError && (code === undefined || e.code === code);
}

/** Adds what was being done to an error's message, keeping its code. */
export function during(what: string, e: unknown): NoidError {
  if (e instanceof NoidError) {
    return new NoidError(e.code, `${what}: ${e.message}`, { cause: e, ...(e.field ? { field: e.field } : {}) });
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new NoidError("INTERNAL", `${what}: ${msg}`, { cause: e });
}
