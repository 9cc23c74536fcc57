// One chaos host: the real agent session, reconcile loop and fencing (agent/)
// over the in-memory driver, as its own process so the suite can SIGKILL it.
// Config in NOID_CHAOS_AGENT (JSON); tells the parent over IPC which VMs run.
import { join } from "node:path";
import { credentials } from "@grpc/grpc-js";
import { createLogger } from "../common/logger.js";
import { AgentServiceClient } from "../gen/noid/v1/agent.js";
import { DriverSet } from "../agent/drivers/driver-set.js";
import { ReconcileLoop } from "../agent/reconcile/loop.js";
import { Fence } from "../agent/reconcile/fence.js";
import { AgentSession } from "../agent/session.js";
import { CHANNEL_OPTIONS } from "../agent/identity.js";
import { coordinatorTarget } from "../sdk/targets.js";
import { MemoryDriver } from "./memory-driver.js";

export interface ChaosAgentConfig {
  name: string;
  /** Coordinator addresses (through this host's relays). */
  addresses: string[];
  token: string;
  dir: string;
  capacity: { vcpus: number; memoryMb: number; diskGb: number };
  /** Sabotage (to see the checker catch VMs run twice): no fencing. */
  noFencing?: boolean;
}

async function main(): Promise<void> {
  const c = JSON.parse(process.env.NOID_CHAOS_AGENT ?? "{}") as ChaosAgentConfig;
  const logger = createLogger({ name: c.name, level: process.env.NOID_CHAOS_LOG_LEVEL ?? "warn" });
  const send = (running: string[]) => process.send?.({ type: "running", running });
  const driver = new MemoryDriver("sandbox", join(c.dir, "vms.json"), send);
  const drivers = new DriverSet([driver]);
  let session: AgentSession | undefined;
  const loop = new ReconcileLoop({ drivers, logger, onStatus: (r) => session?.report(r), resyncMs: 2000, retryMs: 200, maxRetryMs: 2000 });
  const target = coordinatorTarget(c.addresses);
  const client = new AgentServiceClient(target.target, credentials.createInsecure(), { ...CHANNEL_OPTIONS, ...target.options });
  session = new AgentSession({
    client,
    token: c.token,
    registration: {
      name: c.name,
      address: "127.0.0.1",
      labels: {},
      drivers: ["sandbox"],
      capacity: c.capacity,
      wireguardPublicKey: Buffer.alloc(32, c.name.length).toString("base64"),
      wireguardPort: 51820,
      agentVersion: "chaos",
      posture: undefined,
    },
    sink: loop,
    logger,
    backoff: { initialMs: 100, maxMs: 1000 },
    registerTimeoutMs: 3000,
  });
  await loop.start();
  session.start();
  const s = session;
  if (!c.noFencing) new Fence({ loop, lastRenewedAt: () => s.lastRenewedAt, logger, everyMs: 100 }).start();
  process.on("disconnect", () => process.exit(0));
  process.send?.({ type: "ready" });
}

main().catch((err: unknown) => {
  process.stderr.write(`chaos agent: ${String((err as Error)?.stack ?? err)}\n`);
  process.exit(1);
});
