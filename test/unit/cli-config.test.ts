// Config file reading/writing (real files in a temp dir) and the precedence
// of env over flags over context.
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { configPath, loadConfig, saveConfig, withContext, type CliConfig } from "../../cli/config.js";
import { UsageError } from "../../cli/parse.js";
import { DEFAULT_SERVER, resolveConnection } from "../../cli/settings.js";

const TOK_A = "a".repeat(64);
const TOK_B = "b".repeat(64);
const TOK_ENV = "e".repeat(64);

let dir = "";
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "noid-cli-config-"));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe("config file", () => {
  it("NOID_CONFIG overrides the path; otherwise ~/.noid/config.toml", () => {
    expect(configPath({ NOID_CONFIG: "/x/c.toml", HOME: "/home/u" })).toBe("/x/c.toml");
    expect(configPath({ HOME: "/home/u" })).toBe("/home/u/.noid/config.toml");
  });

  it("a missing file is an empty config", () => {
    expect(loadConfig(join(dir, "nope.toml"))).toEqual({ contexts: {} });
  });

  it("writes 0600 in a 0700 directory and reads back what it wrote", () => {
    const path = join(dir, "sub", ".noid", "config.toml");
    const cfg = withContext({ contexts: {} }, "prod", { server: "noid.example:7654", token: TOK_A, ca_file: "/etc/noid/ca.pem" });
    saveConfig(path, cfg);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, "sub", ".noid")).mode & 0o777).toBe(0o700);
    expect(loadConfig(path)).toEqual(cfg);
    const text = readFileSync(path, "utf8");
    expect(text).toContain('current_context = "prod"');
    expect(text).toContain("[contexts.prod]");
  });

  it("tightens the mode of an existing, too-open file on save", () => {
    const path = join(dir, "config.toml");
    writeFileSync(path, "", { mode: 0o644 });
    saveConfig(path, { contexts: {} });
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it("names the bad field of a malformed config", () => {
    const path = join(dir, "config.toml");
    writeFileSync(path, '[contexts.dev]\nserver = "h:1"\ninsecure = "yes"\n');
    expect(() => loadConfig(path)).toThrow(/contexts\.dev\.insecure/);
    writeFileSync(path, "this is = = not toml");
    expect(() => loadConfig(path)).toThrow(new RegExp(`reading ${path}`));
  });

  it("withContext adds a context, keeps the others and makes it current", () => {
    const a: CliConfig = { current_context: "a", contexts: { a: { server: "a:1" } } };
    const b = withContext(a, "b", { server: "b:1", insecure: true });
    expect(b).toEqual({ current_context: "b", contexts: { a: { server: "a:1" }, b: { server: "b:1", insecure: true } } });
    expect(a.current_context).toBe("a"); // pure
  });
});

describe("precedence", () => {
  const cfg: CliConfig = {
    current_context: "dev",
    contexts: {
      dev: { server: "dev:7654", token: TOK_A, insecure: true },
      prod: { server: "prod:7654", token: TOK_B, ca_file: "/ca.pem" },
    },
  };

  it("uses the current context", () => {
    expect(resolveConnection({}, {}, cfg)).toEqual({ server: "dev:7654", token: TOK_A, insecure: true, contextName: "dev" });
  });

  it("--context picks another context", () => {
    expect(resolveConnection({}, { context: "prod" }, cfg)).toEqual({
      server: "prod:7654",
      token: TOK_B,
      insecure: false,
      caFile: "/ca.pem",
      contextName: "prod",
    });
  });

  it("flags beat the context, field by field", () => {
    const c = resolveConnection({}, { context: "prod", server: "flag:1", caFile: "/flag-ca.pem" }, cfg);
    expect(c).toMatchObject({ server: "flag:1", token: TOK_B, caFile: "/flag-ca.pem" });
    expect(resolveConnection({}, { context: "prod", insecure: true }, cfg).insecure).toBe(true);
  });

  it("NOID_SERVER and NOID_TOKEN beat flags and context", () => {
    const c = resolveConnection({ NOID_SERVER: "env:9", NOID_TOKEN: TOK_ENV }, { server: "flag:1" }, cfg);
    expect(c).toMatchObject({ server: "env:9", token: TOK_ENV, contextName: "dev" });
  });

  it("empty env values do not count", () => {
    expect(resolveConnection({ NOID_SERVER: "", NOID_TOKEN: "" }, {}, cfg)).toMatchObject({ server: "dev:7654", token: TOK_A });
  });

  it("with no config at all: default server, no token, TLS on", () => {
    expect(resolveConnection({}, {}, { contexts: {} })).toEqual({ server: DEFAULT_SERVER, insecure: false });
  });

  it("an unknown --context is a usage error that lists the known ones", () => {
    expect(() => resolveConnection({}, { context: "nope" }, cfg)).toThrow(UsageError);
    expect(() => resolveConnection({}, { context: "nope" }, cfg)).toThrow(/have: dev, prod/);
  });
});
