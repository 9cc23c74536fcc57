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

  it("takes the mesh settings from file or flags, with defaults, and refuses bad ones", () => {
    const d = parseAgentConfig({ coordinator: "x:1", name: "h1" });
    expect(d).toMatchObject({ wgInterface: "wg-noid", wgPort: 51820, uplinkMtu: 1500 });
    const { config } = loadConfig(
      ["--coordinator", "x:1", "--name", "h1", "--token-file", tokenFile, "--wg-interface", "labwg1", "--wg-port", "51999", "--uplink-mtu", "9000"],
      {},
    );
    expect(config).toMatchObject({ wgInterface: "labwg1", wgPort: 51999, uplinkMtu: 9000 });
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", wg_interface: "a-name-far-too-long" })).toThrow(/wg_interface/);
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", uplink_mtu: 500 })).toThrow(/uplink_mtu/);
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
