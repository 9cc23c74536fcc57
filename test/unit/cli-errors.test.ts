// One line per failure, with a hint where the user can act, and exit codes:
// usage 2, everything else 1.
import { describe, expect, it } from "vitest";
import { describeError } from "../../cli/errors.js";
import { UsageError } from "../../cli/parse.js";
import { NoidApiError } from "../../sdk/index.js";

describe("describeError", () => {
  it("UNAVAILABLE names the coordinator it could not reach", () => {
    const r = describeError(new NoidApiError("UNAVAILABLE", "connect ECONNREFUSED"), "localhost:7654");
    expect(r).toEqual({ message: "cannot reach coordinator at localhost:7654: connect ECONNREFUSED", exitCode: 1 });
  });

  it("UNAUTHENTICATED points at auth setup", () => {
    const r = describeError(new NoidApiError("UNAUTHENTICATED", "invalid token"), "h:1");
    expect(r.message).toMatch(/^invalid token \(run `noidctl auth setup/);
    expect(r.exitCode).toBe(1);
  });

  it("PERMISSION_DENIED and DEADLINE_EXCEEDED get hints too", () => {
    expect(describeError(new NoidApiError("PERMISSION_DENIED", "read-only token"), "h:1").message).toMatch(/whoami/);
    expect(describeError(new NoidApiError("DEADLINE_EXCEEDED", "GetVm: DEADLINE_EXCEEDED"), "h:1").message).toMatch(/--timeout/);
  });

  it("other API errors are the server's message", () => {
    expect(describeError(new NoidApiError("NOT_FOUND", "vm web not found"), "h:1")).toEqual({ message: "vm web not found", exitCode: 1 });
  });

  it("usage errors exit 2", () => {
    expect(describeError(new UsageError("--vcpus must be a positive integer"), undefined)).toEqual({
      message: "--vcpus must be a positive integer",
      exitCode: 2,
    });
  });

  it("anything else exits 1 with its message", () => {
    expect(describeError(new Error("reading /x: EACCES"), undefined)).toEqual({ message: "reading /x: EACCES", exitCode: 1 });
    expect(describeError("weird", undefined)).toEqual({ message: "weird", exitCode: 1 });
  });
});
