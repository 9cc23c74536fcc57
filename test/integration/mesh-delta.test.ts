// Mesh deltas over real sessions (real coordinator, etcd, gRPC): an agent that
// says Hello.mesh_deltas gets one full snapshot, then deltas; applied in order
// they give, after every change (joins, VMs placed and destroyed, a key
// rotation, a host leaving), exactly the snapshot the coordinator would send
// whole. An agent that does not say so keeps getting full snapshots. A
// resync request is answered with a full snapshot, and deltas follow it.
import { describe, expect, it } from "vitest";
import { MeshSnapshot, type MeshUpdate } from "../../gen/noid/v1/agent.js";
import { eventually, startTestCoordinator } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";

const enc = (s: MeshSnapshot | undefined) => (s ? Buffer.from(MeshSnapshot.encode(s).finish()).toString("base64") : "none");

describe("mesh deltas", () => {
  it("keep a delta-taking agent's view equal to the full snapshot through joins, VMs, a key rotation, a leave and a resync", async () => {
    const c = await startTestCoordinator({ agents: { lease_ttl_seconds: 2, heartbeat_interval_ms: 500 } });
    const agent = (name: string, meshDeltas: boolean) => new SimAgent({ address: c.address, token: c.adminToken, name, autoRun: true, wireguardPublicKey: `key-${name}`, meshDeltas });
    const d1 = agent("d1", true);
    const d2 = agent("d2", true);
    const f3 = agent("f3", false);
    const admin = c.client();
    // The view each agent holds equals the whole snapshot the coordinator would send it now.
    const exact = async (a: SimAgent) => enc(a.mesh) === enc((await admin.getHostMesh(a.name)).snapshot);
    const converged = (what: string, agents = [d1, d2]) =>
      eventually(async () => (await Promise.all(agents.map(exact))).every(Boolean), 15_000, `views equal the full snapshots: ${what}`);
    try {
      await d1.connect();
      await d2.connect();
      await f3.connect();
      await converged("joined", [d1, d2, f3]);
      expect(d1.mesh!.members.map((m) => m.name)).toEqual(["d1", "d2", "f3"]);

      await admin.createVm("x1", { vcpus: 1, memoryMb: 64, host: "d1" });
      const x2 = await admin.createVm("x2", { vcpus: 1, memoryMb: 64, host: "d2" });
      await admin.createVm("x3", { vcpus: 1, memoryMb: 64, host: "f3" });
      await eventually(() => (d1.mesh?.members.filter((m) => m.networks.length > 0).length ?? 0) === 3, 15_000, "every host's VM in d1's view");
      await converged("VMs placed", [d1, d2, f3]);
      expect(d1.mesh!.members.find((m) => m.name === "d2")!.networks[0]!.vms.map((v) => v.vmId)).toEqual([x2.id]);

      // A VM in a network only f3 carries: f3's view changes, d1's and d2's do not (they are sent nothing).
      await admin.createNetwork("other", { cidr: "10.77.0.0/24" });
      const [n1, n2] = [d1.meshUpdates.length, d2.meshUpdates.length];
      await admin.createVm("y1", { vcpus: 1, memoryMb: 64, host: "f3", network: "other" });
      await eventually(() => (f3.mesh?.members.find((m) => m.name === "f3")?.networks.length ?? 0) === 2, 15_000, "y1 in f3's view");
      await converged("y1 placed", [d1, d2, f3]);
      expect([d1.meshUpdates.length, d2.meshUpdates.length]).toEqual([n1, n2]);
      // Then one on d1: d1 now carries "other" too and sees f3's y1 in it (it did not carry it before the change).
      await admin.createVm("y2", { vcpus: 1, memoryMb: 64, host: "d1", network: "other" });
      await eventually(() => (d1.mesh?.members.find((m) => m.name === "f3")?.networks.length ?? 0) === 2, 15_000, "y1 in d1's view");
      await converged("y2 placed", [d1, d2, f3]);
      expect(d2.meshUpdates.length).toBe(n2);

      await admin.destroyVm("x2");
      await eventually(() => d1.mesh?.members.find((m) => m.name === "d2")?.networks.length === 0, 15_000, "x2 gone from d1's view");
      await converged("x2 destroyed");

      // A key rotation is one member in the delta, not the mesh.
      const before = d1.meshUpdates.length;
      await f3.rotateKey("rotated-f3");
      await eventually(() => d1.mesh?.members.find((m) => m.name === "f3")?.wireguardPublicKey === "rotated-f3", 15_000, "rotation seen by d1");
      await converged("key rotated");
      const rotation = d1.meshUpdates.slice(before).find((u) => u.kind?.$case === "delta" && u.kind.value.upserted.some((m) => m.wireguardPublicKey === "rotated-f3"));
      expect(rotation?.kind?.$case === "delta" && rotation.kind.value).toMatchObject({ upserted: [{ name: "f3" }], removedHostIds: [], networks: [] });

      // f3 leaves (its lease expires): removed from the others' views.
      const f3Id = f3.hostId;
      f3.close();
      await eventually(() => d1.mesh?.members.every((m) => m.hostId !== f3Id) === true && d2.mesh?.members.every((m) => m.hostId !== f3Id) === true, 15_000, "f3 gone");
      await converged("f3 left");

      // A resync: the next update is full (one version on), later ones are deltas again.
      const v = d1.meshVersion;
      const n = d1.meshUpdates.length;
      d1.send({ kind: { $case: "meshResync", value: { haveVersion: v, reason: "test" } } });
      await eventually(() => d1.meshUpdates.length > n, 15_000, "full snapshot after the resync");
      expect(d1.meshUpdates[n]).toMatchObject({ version: v + 1, kind: { $case: "full" } });
      await admin.createVm("x4", { vcpus: 1, memoryMb: 64, host: "d2" });
      await eventually(() => (d1.mesh?.members.find((m) => m.name === "d2")?.networks.length ?? 0) === 1, 15_000, "x4 in d1's view");
      await converged("after the resync");

      for (const a of [d1, d2]) {
        expect(a.meshError).toBeUndefined();
        const kinds = a.meshUpdates.map((u: MeshUpdate) => u.kind?.$case);
        expect(a.meshUpdates.map((u) => u.version)).toEqual(a.meshUpdates.map((_, i) => i + 1));
        expect(kinds[0]).toBe("full");
        expect(kinds.filter((k) => k === "full").length).toBe(a === d1 ? 2 : 1);
        expect(kinds.filter((k) => k === "delta").length).toBeGreaterThan(3);
      }
      // The agent that did not ask for deltas got whole snapshots only.
      expect(f3.meshUpdates).toEqual([]);
      expect(f3.mesh?.members.map((m) => m.name)).toEqual(["d1", "d2", "f3"]);
    } finally {
      for (const a of [d1, d2, f3]) a.close();
      await c.stop();
    }
  });
});
