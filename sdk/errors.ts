// The SDK's one error type and the one table that says which gRPC status codes
// are worth retrying. Reads are idempotent, so a read that timed out may be
// tried again; a mutation that timed out may already have happened, so only
// UNAVAILABLE (the call most likely never reached a server) is retried.
import { status, type ServiceError } from "@grpc/grpc-js";

/** gRPC status names, e.g. "NOT_FOUND". */
export type StatusName = keyof typeof status;

/** What a call does to server state: decides which failures may be retried. */
export type CallKind = "read" | "mutation";

/** Retryability per status code, per kind of call. Anything absent is never retried. */
export const RETRYABLE: Readonly<Record<CallKind, ReadonlySet<StatusName>>> = {
  read: new Set<StatusName>(["UNAVAILABLE", "DEADLINE_EXCEEDED"]),
  mutation: new Set<StatusName>(["UNAVAILABLE"]),
};

export function isRetryable(code: StatusName, kind: CallKind): boolean {
  return RETRYABLE[kind].has(code);
}

/** Maps a numeric gRPC status to its name ("UNKNOWN" for numbers gRPC doesn't define). */
export function statusName(grpcCode: number): StatusName {
  const entry = Object.entries(status).find(([, v]) => v === grpcCode);
  return (entry?.[0] as StatusName | undefined) ?? "UNKNOWN";
}

/** A failed Noid API call: the server's status code and message. */
export class NoidApiError extends Error {
  /** gRPC status name, e.g. "NOT_FOUND". */
  readonly code: StatusName;
  readonly grpcCode: number;
  /** True when the SDK would retry this failure for the kind of call it came from. */
  readonly retryable: boolean;
  /** The server's status details (its message), or "" when there was none. */
  readonly details: string;

  constructor(
    code: StatusName,
    message: string,
    opts: { retryable?: boolean; details?: string; cause?: unknown } = {},
  ) {
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = "NoidApiError";
    this.code = code;
    this.grpcCode = status[code];
    this.retryable = opts.retryable ?? false;
    this.details = opts.details ?? "";
  }
}

export function isNoidApiError(e: unknown, code?: StatusName): e is NoidApiError {
  return e instanceof NoidApiError && (code === undefined || e.code === code);
}

function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === "number";
}

/**
 * Turns whatever a grpc-js call threw into a NoidApiError. `what` names the call
 * ("GetVm") so a bare transport error still says what was being done.
 */
export function toApiError(e: unknown, kind: CallKind, what: string): NoidApiError {
  if (e instanceof NoidApiError) return e;
  if (isServiceError(e)) {
    const code = statusName(e.code);
    // grpc-js puts the server's message in `details`; `message` is "<code> <NAME>: <details>".
    // grpc-js appends an empty "Resolution note:" to connection failures; drop it.
    const details = (e.details ?? "").replace(/\s*Resolution note:\s*$/, "");
    const message = details !== "" ? details : `${what}: ${code}`;
    return new NoidApiError(code, message, { retryable: isRetryable(code, kind), details, cause: e });
  }
  const msg = e instanceof Error ? e.message : String(e);
  return new NoidApiError("INTERNAL", `${what}: ${msg}`, { cause: e });
}
