import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { mergeLayers, parseAgentConfig } from "../../agent/config.js";
import { readAgentEnv } from "../../agent/env.js";
import { loadConfig } from "../../agent/main.js";

const dir = mkdtempSync(join(tmpdir(), "noid-agent-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const tokenFile = join(dir, "token");
writeFileSync(tokenFile, "tok-123\n");

describe("agent config", () => {
  it("applies schema defaults and names the field at fault", () => {
    const c = parseAgentConfig({ coordinator: "unix:/run/noid/c.sock", name: "h1" });
    expect(c).toMatchObject({ stateDir: "/var/lib/noid/agent", drivers: ["sandbox"], insecure: false, nsPrefix: "noid", labels: {} });
    expect(c.capacity.vcpus).toBeGreaterThan(0);
    expect(() => parseAgentConfig({ name: "h1" })).toThrow(/coordinator/);
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "Bad_Name" })).toThrow(/name/);
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", capacity: { vcpus: -1 } })).toThrow(/capacity\.vcpus/);
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", colour: "blue" })).toThrow();
  });

  it("serves no metrics unless --metrics-listen names a host:port", () => {
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1" }).metricsListen).toBe("");
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1", metrics_listen: "127.0.0.1:9655" }).metricsListen).toBe("127.0.0.1:9655");
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", metrics_listen: "9655" })).toThrow(/metrics_listen/);
    expect(loadConfig(["--coordinator", "x:1", "--name", "h1", "--token-file", tokenFile, "--metrics-listen", "[::1]:0"], {}).config.metricsListen).toBe("[::1]:0");
  });

  it("reads NOID_* env in one place", () => {
    const e = readAgentEnv({ NOID_COORDINATOR: "a:1", NOID_INSECURE: "true", NOID_TOKEN: "t", NOID_AGENT_CONFIG: "/x.toml" });
    expect(e).toEqual({ configFile: "/x.toml", token: "t", overrides: { coordinator: "a:1", insecure: true } });
  });

  it("layers file < env < flags, nested tables merge", () => {
    const file = join(dir, "agent.toml");
    writeFileSync(
      file,
      [
        'coordinator = "10.99.0.100:7443"',
        'name = "from-file"',
        `token_file = "${tokenFile}"`,
        "[capacity]",
        "vcpus = 2",
        "memory_mb = 2048",
        "[labels]",
        'zone = "a"',
      ].join("\n"),
    );
    const { config, token } = loadConfig(
      ["--config", file, "--name", "h7", "--vcpus", "8", "--label", "rack=r1", "--insecure"],
      { NOID_COORDINATOR: "unix:/run/noid/coord.sock", NOID_NAME: "from-env" },
    );
    expect(token).toBe("tok-123");
    expect(config).toMatchObject({
      coordinator: "unix:/run/noid/coord.sock",
      name: "h7",
      insecure: true,
      capacity: { vcpus: 8, memoryMb: 2048 },
      labels: { rack: "r1" },
    });
    expect(mergeLayers({ a: { x: 1, y: 2 } }, { a: { y: 3 } }, { a: { x: undefined } })).toEqual({ a: { x: 1, y: 3 } });
  });

  it("rejects a named config file that is missing and a missing token", () => {
    expect(() => loadConfig(["--config", join(dir, "nope.toml")], {})).toThrow(/does not exist/);
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1"], { NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow();
    writeFileSync(join(dir, "empty.toml"), "");
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1"], { NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow(/token_file/);
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1", "--vcpus", "two"], { NOID_TOKEN: "t", NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow(/vcpus/);
  });
});
