// The coordinator under test as its own process (the bench's load and
// simulated hosts run in the parent, so both get a core). Started by
// bench/cluster.ts with the config in NOID_BENCH_CONFIG; talks over IPC.
import { readFileSync } from "node:fs";
import { silentLogger } from "../common/logger.js";
import { resolveConfig } from "../coordinator/config.js";
import { startCoordinator } from "../coordinator/server.js";
import { WindowProfiler } from "./window-prof.js";
import { loopMonitor, storeCalls } from "./cluster.js";

type Request = { id: number; type: "stats" | "stop" | "profStart" | "profStop"; dir?: string; name?: string; gc?: string };

async function main(): Promise<void> {
  const config = resolveConfig(JSON.parse(process.env.NOID_BENCH_CONFIG ?? "{}") as Record<string, unknown>);
  const handle = await startCoordinator({ config, logger: silentLogger() });
  const adminToken = readFileSync(handle.adminTokenFile, "utf8").trim();
  const prof = new WindowProfiler();
  const loop = loopMonitor();
  process.on("message", (m: Request) => {
    void (async () => {
      if (m.type === "profStart") {
        await prof.start();
        process.send!({ id: m.id });
      } else if (m.type === "profStop") {
        process.send!({ id: m.id, file: await prof.stop(m.dir!, m.name!) });
      } else if (m.type === "stats") {
        // Only when asked (the RSS figure): a full collection takes 50 ms here, and one forced
        // just before the latency figure's creates delayed the first of them by as much.
        if (m.gc) (globalThis as { gc?: () => void }).gc?.();
        const mem = process.memoryUsage();
        process.send!({ id: m.id, rss: mem.rss, heapUsed: mem.heapUsed, placement: handle.placement?.stats ?? { attempts: 0, placed: 0, conflicts: 0, unplaceable: 0 }, cpu: process.cpuUsage(), loop: loop(), storeCalls: await storeCalls(handle.metrics.registry), storeSeconds: await storeCalls(handle.metrics.registry, "_sum") });
      } else if (m.type === "stop") {
        await handle.stop();
        process.send!({ id: m.id }, () => process.exit(0));
      }
    })();
  });
  // The bench died: do not outlive it.
  process.on("disconnect", () => process.exit(1));
  process.send!({ type: "ready", address: handle.address, adminToken });
}

main().catch((err: unknown) => {
  process.stderr.write(`bench coordinator: ${String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
});
