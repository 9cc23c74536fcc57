// A local cluster (one host unless asked for more) that offers the sandbox and qemu drivers, with the project's guest
// built, and a tenant "alice": what the QEMU end-to-end tests start from.
import { join } from "node:path";
import { expect } from "vitest";
import { isAlive, run, type ProcessRef } from "../../common/run.js";
import { repoRoot, startLocalCluster, type LocalCluster } from "../../deploy/cluster.js";
import { labLeftovers } from "../../deploy/lab/lab.js";
import { Role, type NoidClient } from "../../sdk/index.js";

export interface QemuCluster {
  cluster: LocalCluster;
  alice: NoidClient;
  aliceToken: string;
  /** QEMU processes the test saw; all must be gone after stop(). */
  qemuPids: ProcessRef[];
  /** Stops everything and checks nothing of the run is left: namespaces, links, QEMU processes. */
  stop(): Promise<void>;
}

/** `qemuPids`: the test pushes the QEMU processes it sees; stop() checks they are all gone. `hosts`: 1 by default. */
export async function startQemuCluster(prefix: string, memoryMb: number, qemuPids: ProcessRef[], opts: { hosts?: number } = {}): Promise<QemuCluster> {
  await run(["bash", join(repoRoot, "deploy/guest/build.sh")], { timeoutMs: 300_000 });
  const cluster = await startLocalCluster({
    prefix,
    dir: `/run/noid-e2e-${prefix}`,
    hosts: opts.hosts ?? 1,
    drivers: ["sandbox", "qemu"],
    capacity: { vcpus: 4, memoryMb, diskGb: 20 },
  });
  const aliceToken = (await cluster.client().createToken({ name: "alice", role: Role.ROLE_USER })).secret;
  return {
    cluster,
    alice: cluster.client(aliceToken),
    aliceToken,
    qemuPids,
    async stop() {
      await cluster.stop();
      expect(await labLeftovers(prefix)).toEqual([]);
      expect(qemuPids.filter(isAlive)).toEqual([]);
    },
  };
}
