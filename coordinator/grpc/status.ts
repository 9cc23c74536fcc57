// The one table mapping domain errors to gRPC status codes.
import { status, Metadata, type ServiceError } from "@grpc/grpc-js";
import { NoidError, type ErrorCode } from "../../common/errors.js";

export const STATUS_OF: Record<ErrorCode, status> = {
  INVALID_ARGUMENT: status.INVALID_ARGUMENT,
  NOT_FOUND: status.NOT_FOUND,
  ALREADY_EXISTS: status.ALREADY_EXISTS,
  PERMISSION_DENIED: status.PERMISSION_DENIED,
  UNAUTHENTICATED: status.UNAUTHENTICATED,
  RESOURCE_EXHAUSTED: status.RESOURCE_EXHAUSTED,
  FAILED_PRECONDITION: status.FAILED_PRECONDITION,
  CONFLICT: status.ABORTED,
  UNAVAILABLE: status.UNAVAILABLE,
  DEADLINE_EXCEEDED: status.DEADLINE_EXCEEDED,
  UNIMPLEMENTED: status.UNIMPLEMENTED,
  INTERNAL: status.INTERNAL,
};

/** Turns anything thrown by a handler into a ServiceError; internal details stay in the log. */
export function toServiceError(e: unknown): Partial<ServiceError> {
  const metadata = new Metadata();
  if (e instanceof NoidError) {
    if (e.field) metadata.set("noid-field", e.field);
    const code = STATUS_OF[e.code];
    const details = e.code === "INTERNAL" ? "internal error" : e.message;
    return { code, details, metadata };
  }
  return { code: status.INTERNAL, details: "internal error", metadata };
}
