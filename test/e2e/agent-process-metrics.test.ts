// The real noid-agent binary (dist/agent/main.js) with --metrics-listen,
// registered with a real coordinator: its /metrics shows the first reconcile
// pass, the driver's recover and the process metrics. The agent runs in a lab host
// (its own network namespace: its WireGuard link and nftables tables are made there,
// never in the machine's own namespace) and reaches the coordinator over a unix socket;
// destroying the lab kills it and its wireguard-go by PID and removes the namespace.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type Lab, createLab, destroyLab, labLeftovers } from "../../deploy/lab/lab.js";
import { isAlive, run } from "../../common/run.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { type Exposition, parseExposition, sampleValue } from "../helpers/exposition.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = randomBytes(3).toString("hex");
const prefix = `pm${tag}`;
const METRICS_PORT = 9464;

describe("noid-agent --metrics-listen", () => {
  let c: TestCluster;
  let dir: string;
  let lab: Lab;
  const tables = async (netns?: string): Promise<string[]> =>
    (await run(["nft", "list", "tables"], netns ? { netns } : {})).stdout.split("\n").filter((l) => l.trim() !== "");
  let rootBefore: string[] = [];
  let agentTables: string[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "noid-agent-proc-"));
    rootBefore = await tables();
    c = await startTestCoordinator({ server: { unix_socket: join(dir, "coordinator.sock") } });
    lab = await createLab({ prefix, hosts: 1 });
  });
  afterAll(async () => {
    // Kills the agent and the wireguard-go it started (every process in the namespace, by PID).
    await destroyLab(prefix);
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    expect(await labLeftovers(prefix)).toEqual([]);
    // None of the agent's tables appeared in the machine's own namespace.
    expect((await tables()).filter((t) => !rootBefore.includes(t) && agentTables.includes(t))).toEqual([]);
  });

  /** /metrics fetched from inside the host's namespace (the lab's addresses exist only there). */
  async function scrapeInLab(address: string): Promise<Exposition> {
    const js = `fetch(${JSON.stringify(`http://${address}/metrics`)}).then((r) => r.text()).then((t) => process.stdout.write(t), (e) => { console.error(String(e)); process.exit(1); })`;
    const r = await lab.exec("h1", [process.execPath, "-e", js], { allowFail: true, timeoutMs: 10_000 });
    if (r.exitCode !== 0) throw new Error(`scrape ${address}: ${r.stderr.trim()}`);
    return parseExposition(r.stdout);
  }

  it("serves the agent's metrics over HTTP", async () => {
    const h = lab.hosts[0]!;
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, c.adminToken + "\n", { mode: 0o600 });
    const log = join(dir, "agent.log");
    const metricsAddress = `${h.address}:${METRICS_PORT}`;
    const agent = await lab.spawn(
      h,
      [
        process.execPath, join(repo, "dist/agent/main.js"),
        "--coordinator", `unix:${join(dir, "coordinator.sock")}`, "--insecure", "--name", `pm-${tag}`, "--address", h.address, "--token-file", tokenFile,
        "--state-dir", join(dir, "state"), "--ns-prefix", `pm${tag}`, "--wg-interface", `wgpm${tag}`, "--metrics-listen", metricsAddress, "--log-level", "warn",
      ],
      { logFile: log },
    );
    const m = await eventually(
      async () => {
        if (!isAlive(agent)) throw new Error(`agent exited: ${readFileSync(log, "utf8")}`);
        const s = await scrapeInLab(metricsAddress).catch(() => undefined);
        return s && (sampleValue(s, "noid_agent_reconcile_runs_total", { result: "converged" }) ?? 0) >= 1 ? s : undefined;
      },
      20_000,
      "the agent's first reconcile pass in its metrics",
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}; agent log:\n${readFileSync(log, "utf8")}`);
    });
    expect(sampleValue(m, "noid_agent_driver_operations_total", { driver: "sandbox", op: "recover", result: "ok" })).toBe(1);
    expect(sampleValue(m, "noid_agent_vms", { phase: "running" })).toBe(0);
    expect(sampleValue(m, "noid_agent_process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect((await c.client().listHosts()).map((x) => x.name)).toContain(`pm-${tag}`);
    // Its firewall is in its own namespace (the ports table comes with the first port snapshot).
    agentTables = await eventually(async () => {
      const t = await tables(h.netns);
      return t.includes("table ip noid_ports") ? t : undefined;
    }, 10_000, "the agent's ports table in its namespace");
  });
});
