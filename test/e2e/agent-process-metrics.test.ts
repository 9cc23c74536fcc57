// The real noid-agent binary (dist/agent/main.js) with --metrics-listen,
// registered with a real coordinator: its /metrics shows the first reconcile
// pass, the driver's recover and the process metrics. It runs no VM, so it
// creates nothing on the machine; it is killed by its PID.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ProcessRef, isAlive, killProcess, processRef, spawnDetached } from "../../common/run.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";
import { sampleValue, scrape } from "../helpers/exposition.js";

const repo = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const tag = randomBytes(3).toString("hex");

async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", () => r()));
  const port = (s.address() as { port: number }).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe("noid-agent --metrics-listen", () => {
  let c: TestCluster;
  let dir: string;
  let agent: ProcessRef | undefined;

  beforeAll(async () => {
    c = await startTestCoordinator();
    dir = mkdtempSync(join(tmpdir(), "noid-agent-proc-"));
  });
  afterAll(async () => {
    // The agent's wireguard-go outlives it (as VMs do): let its first mesh pass record the
    // daemon (it always starts one), stop the agent, then stop the recorded daemon by PID.
    const wg = join(dir, "state", "wireguard-go.json");
    if (agent && isAlive(agent)) await eventually(() => existsSync(wg), 20_000, "the agent to record its wireguard-go").catch(() => undefined);
    if (agent && isAlive(agent)) await killProcess(agent);
    if (dir && existsSync(wg)) {
      const ref = JSON.parse(readFileSync(wg, "utf8")) as ProcessRef;
      if (isAlive(ref)) await killProcess(ref);
    }
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("serves the agent's metrics over HTTP", async () => {
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, c.adminToken + "\n", { mode: 0o600 });
    const port = await freePort();
    const log = join(dir, "agent.log");
    const pid = await spawnDetached(
      [
        process.execPath, join(repo, "dist/agent/main.js"),
        "--coordinator", c.address, "--insecure", "--name", `pm-${tag}`, "--address", "127.0.0.1", "--token-file", tokenFile,
        "--state-dir", join(dir, "state"), "--ns-prefix", `pm${tag}`, "--wg-interface", `wgpm${tag}`, "--metrics-listen", `127.0.0.1:${port}`, "--log-level", "warn",
      ],
      { logFile: log },
    );
    agent = processRef(pid);
    const m = await eventually(
      async () => {
        if (agent && !isAlive(agent)) throw new Error(`agent exited: ${readFileSync(log, "utf8")}`);
        const s = await scrape(`127.0.0.1:${port}`);
        return (sampleValue(s, "noid_agent_reconcile_runs_total", { result: "converged" }) ?? 0) >= 1 ? s : undefined;
      },
      20_000,
      "the agent's first reconcile pass in its metrics",
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}; agent log:\n${readFileSync(log, "utf8")}`);
    });
    expect(sampleValue(m, "noid_agent_driver_operations_total", { driver: "sandbox", op: "recover", result: "ok" })).toBe(1);
    expect(sampleValue(m, "noid_agent_vms", { phase: "running" })).toBe(0);
    expect(sampleValue(m, "noid_agent_process_cpu_user_seconds_total")).toBeGreaterThan(0);
    expect((await c.client().listHosts()).map((h) => h.name)).toContain(`pm-${tag}`);
  });
});
