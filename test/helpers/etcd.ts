// A throwaway etcd for integration tests: its own temp dir and free ports,
// removed on stop. Call startTestEtcd() in beforeAll and stop() in afterAll.
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startEmbeddedEtcd, type EmbeddedEtcd } from "../../coordinator/etcd/embedded.js";

export interface TestEtcd {
  endpoints: string[];
  etcd: EmbeddedEtcd;
  stop(): Promise<void>;
}

export async function startTestEtcd(): Promise<TestEtcd> {
  const dir = await mkdtemp(join(tmpdir(), "noid-test-etcd-"));
  let etcd: EmbeddedEtcd;
  try {
    etcd = await startEmbeddedEtcd({ dataDir: dir, unsafeNoFsync: true });
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    endpoints: etcd.endpoints,
    etcd,
    stop: async () => {
      try {
        await etcd.stop();
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    },
  };
}
