// Pure parsers behind noidctl's flags.
import { describe, expect, it } from "vitest";
import { parseDuration, parseKeyValues, parsePositiveInt, parseRole, parseTimeoutSeconds, roleName, UsageError } from "../../cli/parse.js";
import { specFromFlags } from "../../cli/commands/vm.js";
import { pickToken } from "../../cli/commands/auth.js";
import { Role } from "../../sdk/index.js";

describe("parseDuration", () => {
  it.each([
    ["45s", 45],
    ["90m", 5_400],
    ["12h", 43_200],
    ["30d", 2_592_000],
    ["2w", 1_209_600],
    [" 1h ", 3_600],
  ])("%s = %d seconds", (text, seconds) => expect(parseDuration(text)).toBe(seconds));

  it.each(["", "30", "d", "1.5h", "-1h", "0m", "10y", "1h30m", "1H"])("rejects %j", (text) => {
    expect(() => parseDuration(text)).toThrow(UsageError);
  });
});

describe("other flags", () => {
  it("parses k=v pairs, keeping '=' in values", () => {
    expect(parseKeyValues("--label", ["a=1", "b=x=y", "a=2", "e="])).toEqual({ a: "2", b: "x=y", e: "" });
    expect(() => parseKeyValues("--label", ["novalue"])).toThrow(/--label expects key=value/);
    expect(() => parseKeyValues("--label", ["=v"])).toThrow(UsageError);
  });

  it("parses positive integers only", () => {
    expect(parsePositiveInt("--vcpus", "4")).toBe(4);
    for (const bad of ["0", "-1", "1.5", "x", "", "1e3"]) expect(() => parsePositiveInt("--vcpus", bad)).toThrow(/--vcpus/);
  });

  it("maps roles both ways", () => {
    expect(parseRole("read-only")).toBe(Role.ROLE_READ_ONLY);
    expect(roleName(Role.ROLE_ADMIN)).toBe("admin");
    expect(() => parseRole("root")).toThrow(/admin, user, read-only/);
  });

  it("turns --timeout seconds into milliseconds", () => {
    expect(parseTimeoutSeconds("2.5")).toBe(2_500);
    expect(() => parseTimeoutSeconds("0")).toThrow(UsageError);
  });

  it("builds a VmSpec from create's flags", () => {
    const spec = specFromFlags({
      vcpus: "2",
      memory: "1024",
      disk: "5",
      label: ["tier=db"],
      hostLabel: ["zone=a"],
      waitTimeout: "300",
      antiAffinity: "db",
      networkGroup: "prod",
    });
    expect(spec).toEqual({
      vcpus: 2,
      memoryMb: 1024,
      diskGb: 5,
      labels: { tier: "db" },
      hostSelector: { zone: "a" },
      antiAffinityGroup: "db",
      networkGroup: "prod",
    });
  });

  it("takes the token from --token or stdin and never echoes a bad one", () => {
    const t = "0123456789abcdef".repeat(4);
    expect(pickToken({ token: t }, undefined)).toBe(t);
    expect(pickToken({ tokenStdin: true }, `${t}\n`)).toBe(t);
    expect(() => pickToken({}, undefined)).toThrow(/token is required/);
    expect(() => pickToken({ token: t, tokenStdin: true }, t)).toThrow(/not both/);
    try {
      pickToken({ token: "SECRET-not-hex" }, undefined);
      expect.unreachable();
    } catch (e) {
      expect((e as Error).message).not.toContain("SECRET");
    }
  });
});
