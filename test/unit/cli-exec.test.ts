import { describe, expect, it } from "vitest";
import { execEnv } from "../../cli/commands/exec.js";

describe("noidctl exec -e", () => {
  it("takes KEY=VALUE literally and KEY from the local environment", () => {
    expect(execEnv(["A=1", "B=x=y", "C"], { C: "from-env" })).toEqual({ A: "1", B: "x=y", C: "from-env" });
  });
  it("refuses a KEY that is not set locally, and bad names", () => {
    expect(() => execEnv(["MISSING"], {})).toThrow(/MISSING is not set/);
    expect(() => execEnv(["1BAD=x"], {})).toThrow(/KEY=VALUE/);
    expect(() => execEnv(["=x"], {})).toThrow(/KEY=VALUE/);
  });
});
