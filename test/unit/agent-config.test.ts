import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { defaultGuestDir, mergeLayers, parseAgentConfig, readConfigFile } from "../../agent/config.js";
import { driversFromConfig, recordsDir } from "../../agent/drivers/from-config.js";
import { silentLogger } from "../../common/logger.js";
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
    expect(c.uplink).toBe("");
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1", uplink: "eth0" }).uplink).toBe("eth0");
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", uplink: "eth0; rm" })).toThrow(/uplink/);
  });

  it("serves no metrics unless --metrics-listen names a host:port", () => {
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1" }).metricsListen).toBe("");
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1", metrics_listen: "127.0.0.1:9655" }).metricsListen).toBe("127.0.0.1:9655");
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", metrics_listen: "9655" })).toThrow(/metrics_listen/);
    expect(loadConfig(["--coordinator", "x:1", "--name", "h1", "--insecure", "--token-file", tokenFile, "--metrics-listen", "[::1]:0"], {}).config.metricsListen).toBe("[::1]:0");
  });

  it("takes the mesh settings from file or flags, with defaults, and refuses bad ones", () => {
    const d = parseAgentConfig({ coordinator: "x:1", name: "h1" });
    expect(d).toMatchObject({ wgInterface: "wg-noid", wgPort: 51820, uplinkMtu: 1500 });
    const { config } = loadConfig(
      ["--coordinator", "x:1", "--name", "h1", "--insecure", "--token-file", tokenFile, "--wg-interface", "labwg1", "--wg-port", "51999", "--uplink-mtu", "9000"],
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

  it("rejects a named config file that is missing, a missing token with --insecure, and a bearer token over TLS", () => {
    expect(() => loadConfig(["--config", join(dir, "nope.toml")], {})).toThrow(/does not exist/);
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1"], { NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow();
    writeFileSync(join(dir, "empty.toml"), "");
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1", "--insecure"], { NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow(/token_file/);
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1", "--token-file", tokenFile], { NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow(/--insecure/);
    const tls = loadConfig(["--coordinator", "a:1", "--name", "h1", "--join-token-file", "/x/jt", "--ca-fingerprint", "sha256:ab"], { NOID_AGENT_CONFIG: join(dir, "empty.toml") });
    expect(tls.token).toBeUndefined();
    expect(tls.config).toMatchObject({ joinTokenFile: "/x/jt", caFingerprint: "sha256:ab", insecure: false });
    expect(() => loadConfig(["--coordinator", "a:1", "--name", "h1", "--vcpus", "two"], { NOID_TOKEN: "t", NOID_AGENT_CONFIG: join(dir, "empty.toml") })).toThrow(/vcpus/);
  });

  it("enables several drivers, the first being the default, each with its own settings", async () => {
    const base = { coordinator: "x:1", name: "h1", state_dir: join(dir, "state") };
    const c = parseAgentConfig({ ...base, drivers: ["qemu", "sandbox"], qemu: { accel: "tcg", boot_timeout_ms: 5000 } });
    expect(c.drivers).toEqual(["qemu", "sandbox"]);
    expect(c.qemu).toMatchObject({ guestDir: defaultGuestDir(), accel: "tcg", bootTimeoutMs: 5000, binary: "qemu-system-x86_64" });
    expect(defaultGuestDir()).toMatch(/\/\.noid\/guest$/);
    expect((await driversFromConfig(c, silentLogger())).names).toEqual(["qemu", "sandbox"]);
    const flags = loadConfig(["--coordinator", "x:1", "--name", "h1", "--insecure", "--token-file", tokenFile, "--drivers", "sandbox,qemu"], {});
    expect(flags.config.drivers).toEqual(["sandbox", "qemu"]);

    expect(() => parseAgentConfig({ ...base, drivers: ["sandbox", "vmware"] })).toThrow(/drivers\.1/);
    expect(() => parseAgentConfig({ ...base, drivers: ["sandbox", "sandbox"] })).toThrow(/drivers: lists a driver twice/);
    expect(() => parseAgentConfig({ ...base, qemu: { accel: "hvf" } })).toThrow(/qemu\.accel/);
    // Firecracker needs its kernel and images named, and its binaries present.
    expect(() => parseAgentConfig({ ...base, drivers: ["firecracker"] })).toThrow(/firecracker\.kernel: is required when drivers includes firecracker/);
    const fc = parseAgentConfig({
      ...base,
      drivers: ["sandbox", "firecracker"],
      firecracker: { kernel: "/k/vmlinux", image_dir: "/images", binary: join(dir, "no-firecracker"), jailer: join(dir, "no-jailer") },
    });
    await expect(driversFromConfig(fc, silentLogger())).rejects.toMatchObject({
      code: "INVALID_ARGUMENT",
      message: expect.stringMatching(/firecracker is enabled but cannot run on this host: .*no-firecracker is not an executable file/),
    });
    // A driver no longer enabled that still has VMs here is kept to manage them, not offered.
    const stateDir = join(dir, "retire");
    mkdirSync(recordsDir(stateDir, "qemu"), { recursive: true });
    writeFileSync(join(recordsDir(stateDir, "qemu"), "0123456789.json"), "{}");
    const retiring = await driversFromConfig(parseAgentConfig({ ...base, state_dir: stateDir, drivers: ["sandbox"] }), silentLogger());
    expect([retiring.names, retiring.retired]).toEqual([["sandbox"], ["qemu"]]);
    // The example config parses as documented.
    const example = readConfigFile(join(import.meta.dirname, "../../deploy/config/agent.toml"), true);
    expect(parseAgentConfig(example)).toMatchObject({ drivers: ["sandbox"], qemu: { accel: "auto", bootTimeoutMs: 60_000 }, firecracker: { uid: 65534 } });
    const noQemu = parseAgentConfig({ ...base, drivers: ["qemu"], qemu: { binary: "no-such-qemu-binary" } });
    await expect(driversFromConfig(noQemu, silentLogger())).rejects.toMatchObject({ message: expect.stringMatching(/no-such-qemu-binary is not an executable on PATH/) });
  });
});
