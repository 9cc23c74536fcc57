import { describe, expect, it } from "vitest";
import { KEY_FILE, actionCommands } from "../../mesh/actions.js";
import { ensureWireguard, parseWgDump, planWireguard } from "../../mesh/wireguard.js";
import { type Runner, type Spawner, isAlive, processRef, spawnDetached } from "../../common/run.js";

// Captured from `wg show wg-noid dump` (wireguard-go 0.0.2023, wireguard-tools 1.0.20210914), tabs kept.
const DUMP = [
  "2AzEXsW/3cUWegPBRcvZaBBcHnv/hJESwa5UU3i8kFE=\tgj6baRx8mtw27fo6dXZwdxTCC9NJH5n9fXTyYiIVbVY=\t51820\toff",
  "pvGZu88yAKFStDI0GlsIOqB67ncS0BH6wLg6sGu0QGU=\t(none)\t10.99.0.2:51820\t100.64.0.2/32\t0\t0\t0\toff",
  "Qm9ndXNLZXlCb2d1c0tleUJvZ3VzS2V5Qm9ndXNLZXk=\t(none)\t(none)\t(none)\t0\t0\t0\toff",
].join("\n");
const FRESH = "(none)\t(none)\t0\toff";

const desired = {
  ifname: "wg-noid",
  listenPort: 51820,
  publicKey: "gj6baRx8mtw27fo6dXZwdxTCC9NJH5n9fXTyYiIVbVY=",
  address: "100.64.0.1/16",
  mtu: 1440,
  peers: [
    { hostId: "h2", publicKey: "pvGZu88yAKFStDI0GlsIOqB67ncS0BH6wLg6sGu0QGU=", endpoint: "10.99.0.2:51820", allowedIps: ["100.64.0.2/32"] },
    { hostId: "h3", publicKey: "M2hvc3RLZXkzaG9zdEtleTNob3N0S2V5M2hvc3RLZXk=", endpoint: "10.99.0.3:51820", allowedIps: ["100.64.0.3/32"] },
  ],
};

describe("wg dump", () => {
  it("parses interface and peers, and drops the private key", () => {
    const o = parseWgDump(DUMP);
    expect(o.publicKey).toBe(desired.publicKey);
    expect(o.listenPort).toBe(51820);
    expect(o.peers).toEqual([
      { publicKey: desired.peers[0]!.publicKey, endpoint: "10.99.0.2:51820", allowedIps: ["100.64.0.2/32"], latestHandshake: 0, rxBytes: 0, txBytes: 0 },
      { publicKey: "Qm9ndXNLZXlCb2d1c0tleUJvZ3VzS2V5Qm9ndXNLZXk=", allowedIps: [], latestHandshake: 0, rxBytes: 0, txBytes: 0 },
    ]);
    expect(JSON.stringify(o)).not.toContain("2AzEXsW");
    expect(parseWgDump(FRESH)).toEqual({ listenPort: 0, peers: [] });
    expect(() => parseWgDump("")).toThrow(/interface line/);
  });

  it("plans only the difference", () => {
    const plan = planWireguard(desired, parseWgDump(DUMP));
    expect(plan).toEqual([
      { kind: "wg-peer-remove", ifname: "wg-noid", publicKey: "Qm9ndXNLZXlCb2d1c0tleUJvZ3VzS2V5Qm9ndXNLZXk=" },
      { kind: "wg-peer-set", ifname: "wg-noid", peer: desired.peers[1] },
    ]);
    expect(planWireguard(desired, parseWgDump(FRESH)).map((a) => a.kind)).toEqual(["wg-key", "wg-port", "wg-peer-set", "wg-peer-set"]);
    const moved = { ...desired, peers: [{ ...desired.peers[0]!, endpoint: "10.99.0.22:51820" }] };
    expect(planWireguard(moved, parseWgDump(DUMP)).map((a) => a.kind)).toEqual(["wg-peer-remove", "wg-peer-set"]);
  });

  it("builds wg argv without the private key in it", () => {
    const [key] = actionCommands({ kind: "wg-key", ifname: "wg-noid" });
    expect(key).toEqual({ argv: ["wg", "set", "wg-noid", "private-key", KEY_FILE], wg: true, keyFile: true });
    expect(actionCommands({ kind: "wg-peer-set", ifname: "wg-noid", peer: desired.peers[1]! })[0]?.argv.join(" ")).toBe(
      "wg set wg-noid peer M2hvc3RLZXkzaG9zdEtleTNob3N0S2V5M2hvc3RLZXk= endpoint 10.99.0.3:51820 allowed-ips 100.64.0.3/32",
    );
    expect(actionCommands({ kind: "wg-peer-remove", ifname: "wg-noid", publicKey: "K=" })[0]?.argv).toEqual(["wg", "set", "wg-noid", "peer", "K=", "remove"]);
  });
});

describe("starting wireguard-go", () => {
  it("a daemon that never opens its socket is stopped, not left running, and the error says so", async () => {
    const started: number[] = [];
    // No kernel WireGuard, no socket ever: every command answers "no".
    const runner: Runner = async () => ({ stdout: "", stderr: "", exitCode: 1 });
    // A real long-running process stands in for a wireguard-go that hangs.
    const spawner: Spawner = async () => {
      const pid = await spawnDetached(["sleep", "60"]);
      started.push(pid);
      return pid;
    };
    await expect(ensureWireguard("wgtest-hang", { runner, spawner, waitMs: 300 })).rejects.toThrow(/did not open its socket within 300 ms/);
    expect(started).toHaveLength(1);
    const ref = processRef(started[0]!);
    expect(ref === undefined || !isAlive(ref)).toBe(true);
  });
});
