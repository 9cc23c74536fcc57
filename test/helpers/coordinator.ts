// Starts a real coordinator (real gRPC on port 0) on a real etcd for a test file.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { silentLogger } from "../../common/logger.js";
import { resolveConfig, type ConfigLayer } from "../../coordinator/config.js";
import { startCoordinator, type CoordinatorHandle } from "../../coordinator/server.js";
import { connect, type NoidClient } from "../../sdk/index.js";
import { startTestEtcd } from "./etcd.js";

export interface TestCluster {
  handle: CoordinatorHandle;
  address: string;
  adminToken: string;
  stateDir: string;
  endpoints: string[];
  /** The real etcd behind the coordinator (stop/restart it to test outages). */
  etcd: Awaited<ReturnType<typeof startTestEtcd>>["etcd"];
  client(token?: string, opts?: { retries?: number; deadlineMs?: number }): NoidClient;
  stop(): Promise<void>;
}

export async function startTestCoordinator(extra: ConfigLayer = {}): Promise<TestCluster> {
  const etcd = await startTestEtcd();
  const stateDir = mkdtempSync(join(tmpdir(), "noid-coord-"));
  const config = resolveConfig(
    {
      server: { listen: "127.0.0.1:0", insecure: true },
      state_dir: stateDir,
      etcd: { endpoints: etcd.endpoints, prefix: `/t${Math.random().toString(16).slice(2, 8)}/` },
      logging: { level: "silent" },
    },
    extra,
  );
  const handle = await startCoordinator({ config, logger: silentLogger() });
  const adminToken = readFileSync(handle.adminTokenFile, "utf8").trim();
  const clients: NoidClient[] = [];
  return {
    handle,
    address: handle.address,
    adminToken,
    stateDir,
    endpoints: etcd.endpoints,
    etcd: etcd.etcd,
    client(token = adminToken, opts = {}) {
      const c = connect({ address: handle.address, token, insecure: true, deadlineMs: opts.deadlineMs ?? 5000, retries: opts.retries ?? 1 });
      clients.push(c);
      return c;
    },
    async stop() {
      clients.forEach((c) => c.close());
      await handle.stop();
      await etcd.stop();
      rmSync(stateDir, { recursive: true, force: true });
    },
  };
}

/** Polls until `f` returns a truthy value (time-boxed). */
/**
 * The store's revision once nothing is being written (three 150 ms looks in a row
 * unchanged, at most about 6 s): events are group-written up to 100 ms after the
 * change they describe, so a "wrote nothing" check must start after them.
 */
export async function quietRevision(h: Pick<CoordinatorHandle, "store" | "events">): Promise<number> {
  let rev = await h.store.revision();
  for (let quiet = 0, round = 0; quiet < 3 && round < 40; round++) {
    await h.events.flush();
    await new Promise((r) => setTimeout(r, 150));
    const now = await h.store.revision();
    quiet = now === rev ? quiet + 1 : 0;
    rev = now;
  }
  return rev;
}

export async function eventually<T>(
  f: () => T | undefined | null | false | 0 | "" | Promise<T | undefined | null | false | 0 | "">,
  timeoutMs = 10_000,
  what = "condition",
): Promise<T> {
  const until = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < until) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`);
}
