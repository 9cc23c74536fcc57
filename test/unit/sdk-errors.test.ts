// The SDK's classification table and backoff arithmetic.
import { status } from "@grpc/grpc-js";
import { describe, expect, it } from "vitest";
import { backoffDelay, isRetryable, NoidApiError, statusName, toApiError, type StatusName } from "../../sdk/index.js";

describe("retry classification", () => {
  const table: Array<[StatusName, boolean, boolean]> = [
    // code, read retried, mutation retried
    ["UNAVAILABLE", true, true],
    ["DEADLINE_EXCEEDED", true, false],
    ["INVALID_ARGUMENT", false, false],
    ["ALREADY_EXISTS", false, false],
    ["NOT_FOUND", false, false],
    ["PERMISSION_DENIED", false, false],
    ["UNAUTHENTICATED", false, false],
    ["RESOURCE_EXHAUSTED", false, false],
    ["FAILED_PRECONDITION", false, false],
    ["ABORTED", false, false],
    ["INTERNAL", false, false],
    ["UNKNOWN", false, false],
    ["CANCELLED", false, false],
  ];
  it.each(table)("%s: read %s, mutation %s", (code, read, mutation) => {
    expect(isRetryable(code, "read")).toBe(read);
    expect(isRetryable(code, "mutation")).toBe(mutation);
  });

  it("names numeric codes", () => {
    expect(statusName(status.NOT_FOUND)).toBe("NOT_FOUND");
    expect(statusName(999)).toBe("UNKNOWN");
  });

  it("turns a grpc ServiceError into a NoidApiError with the server's message", () => {
    const se = Object.assign(new Error("5 NOT_FOUND: vm web not found"), { code: status.NOT_FOUND, details: "vm web not found" });
    const e = toApiError(se, "read", "GetVm");
    expect(e).toBeInstanceOf(NoidApiError);
    expect(e).toMatchObject({ code: "NOT_FOUND", grpcCode: 5, retryable: false, details: "vm web not found" });
    expect(e.message).toBe("vm web not found");
    expect(e.cause).toBe(se);
  });

  it("marks a retryable failure per call kind", () => {
    const se = Object.assign(new Error("4 DEADLINE_EXCEEDED"), { code: status.DEADLINE_EXCEEDED, details: "" });
    expect(toApiError(se, "read", "GetVm").retryable).toBe(true);
    expect(toApiError(se, "mutation", "CreateVm").retryable).toBe(false);
    expect(toApiError(se, "mutation", "CreateVm").message).toBe("CreateVm: DEADLINE_EXCEEDED");
  });

  it("wraps non-gRPC failures as INTERNAL, naming the call", () => {
    const e = toApiError(new TypeError("boom"), "read", "ListVms");
    expect(e.code).toBe("INTERNAL");
    expect(e.message).toBe("ListVms: boom");
  });
});

describe("backoffDelay", () => {
  const policy = { retries: 5, baseDelayMs: 100, maxDelayMs: 1_000 };
  it("grows exponentially up to the cap (upper end of the jitter)", () => {
    const top = (n: number): number => backoffDelay(n, policy, () => 0.999999);
    expect([0, 1, 2, 3, 4, 10].map(top)).toEqual([99, 199, 399, 799, 999, 999]);
  });
  it("is jittered down to zero", () => {
    expect(backoffDelay(3, policy, () => 0)).toBe(0);
    expect(backoffDelay(3, policy, () => 0.5)).toBe(400);
  });
});
