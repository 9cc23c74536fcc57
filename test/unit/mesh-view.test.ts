// The shared mesh view (coordinator/mesh/snapshot.ts): what every session
// sends is computed once per cluster state; per host only its networks are
// added. Properties: the key says "same" exactly when the snapshots encode the
// same, for any two hosts and any two cluster states; and which VM and host
// changes count as mesh changes (hostMeshKey / vmMeshKey) never misses one
// that changes a snapshot.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { buildMeshView, hostMeshKey, MeshDiffMemo, meshHosts, meshSnapshotFromView, MeshVmIndex, vmMeshKey, type MeshInputs } from "../../coordinator/mesh/snapshot.js";
import { applyMeshDelta, diffMesh } from "../../common/mesh-delta.js";
import { MeshSnapshot } from "../../gen/noid/v1/agent.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Network } from "../../gen/noid/v1/network.js";
import { Vm, VmDesiredState, VmPhase } from "../../gen/noid/v1/vm.js";

const HOSTS = ["1", "2", "3", "4"];
const NETS = [
  Network.fromPartial({ id: "a", name: "a", owner: "a", cidr: "10.0.0.0/24", vni: 5000, gateway: "10.0.0.1" }),
  Network.fromPartial({ id: "b", name: "b", owner: "b", cidr: "10.0.1.0/24", vni: 5001, gateway: "10.0.1.1" }),
];

const hostArb = (id: string) =>
  fc.record({ alive: fc.boolean(), meshIp: fc.constantFrom("", `100.64.0.${id}`), key: fc.constantFrom("k1", "k2"), address: fc.constantFrom("10.99.0.1", `10.99.0.${id}`) }).map((h) => ({
    alive: h.alive,
    host: Host.fromPartial({ id, name: `h${id}`, address: h.address, meshIp: h.meshIp, wireguardPublicKey: h.key, wireguardPort: 51820 }),
  }));

const vmArb = (i: number) =>
  fc
    .record({
      hostId: fc.constantFrom("", ...HOSTS),
      networkId: fc.constantFrom("", "a", "b", "gone"),
      mac: fc.constantFrom("", `02:00:00:00:00:${i}`),
      ip: fc.constantFrom(`10.0.0.${i}`, `10.0.0.${i + 50}`),
      deleted: fc.boolean(),
      phase: fc.constantFrom(VmPhase.VM_PHASE_PENDING, VmPhase.VM_PHASE_RUNNING),
      group: fc.constantFrom("", "g"),
    })
    .map((v) =>
      Vm.fromPartial({
        id: `vm${i}`,
        name: `vm${i}`,
        owner: "o",
        desiredState: v.deleted ? VmDesiredState.VM_DESIRED_STATE_DELETED : VmDesiredState.VM_DESIRED_STATE_RUNNING,
        spec: { vcpus: 1, memoryMb: 64, networkGroup: v.group },
        status: { hostId: v.hostId, networkId: v.networkId, mac: v.mac, ip: v.ip, phase: v.phase },
      }),
    );

const inputsArb: fc.Arbitrary<MeshInputs> = fc.record({
  hosts: fc.tuple(...HOSTS.map(hostArb)),
  vms: fc.tuple(...Array.from({ length: 6 }, (_, i) => vmArb(i))),
  networks: fc.subarray(NETS),
  meshPrefixLen: fc.constant(16),
});

const enc = (s: MeshSnapshot) => Buffer.from(MeshSnapshot.encode(s).finish()).toString("base64");

describe("mesh view", () => {
  it("the key is equal exactly when the snapshot is, across hosts and cluster states", () => {
    fc.assert(
      fc.property(inputsArb, inputsArb, fc.constantFrom(...HOSTS), fc.constantFrom(...HOSTS), (x, y, hx, hy) => {
        const a = meshSnapshotFromView(hx, buildMeshView(x), 16);
        const b = meshSnapshotFromView(hy, buildMeshView(y), 16);
        expect(a.key === b.key).toBe(enc(a.snapshot) === enc(b.snapshot));
      }),
      { numRuns: 500 },
    );
  });

  it("a remembered diff is the diff: every host's last snapshot moved to its next one, across a run of cluster states", () => {
    fc.assert(
      fc.property(fc.array(inputsArb, { minLength: 2, maxLength: 5 }), fc.constantFrom(16, 24), (states, lastLen) => {
        const memo = new MeshDiffMemo();
        const sent = new Map(HOSTS.map((h) => [h, meshSnapshotFromView(h, buildMeshView(states[0]!), 16).snapshot]));
        states.slice(1).forEach((st, i) => {
          // The last state also changes the prefix length: a remembered delta must not hide that.
          const len = i === states.length - 2 ? lastLen : 16;
          const view = buildMeshView(st);
          for (const h of HOSTS) {
            const next = meshSnapshotFromView(h, view, len).snapshot;
            const d = memo.diff(sent.get(h)!, next);
            expect(d).toEqual(diffMesh(sent.get(h)!, next));
            expect(enc(applyMeshDelta(sent.get(h)!, d))).toBe(enc(next));
            sent.set(h, next);
          }
        });
      }),
      { numRuns: 300 },
    );
  });

  it("hosts that carry no network share one diff per change, and unchanged members stay the same objects", () => {
    const host = (id: number, key = "k") => Host.fromPartial({ id: `h${id}`, name: `h${id}`, address: "10.99.0.1", meshIp: `100.64.0.${id}`, wireguardPublicKey: key, wireguardPort: 51820 });
    const hosts = Array.from({ length: 200 }, (_, i) => host(i));
    const before = buildMeshView({ hosts: hosts.map((h) => ({ host: h, alive: true })), vms: [], networks: [] });
    // h7 rotates its key (a new record); h9 leaves.
    const rotated = hosts.map((h, i) => (i === 7 ? host(7, "k2") : h));
    const after = buildMeshView({ hosts: rotated.map((h, i) => ({ host: h, alive: i !== 9 })), vms: [], networks: [] });
    expect(after.live.find((m) => m.hostId === "h3")).toBe(before.live.find((m) => m.hostId === "h3"));
    const memo = new MeshDiffMemo();
    for (const h of hosts) {
      const d = memo.diff(meshSnapshotFromView(h.id, before, 16).snapshot, meshSnapshotFromView(h.id, after, 16).snapshot);
      if (h.id === "h9") continue; // h9 (no longer alive) still sees itself: its own lists
      expect(d.upserted.map((m) => [m.hostId, m.wireguardPublicKey])).toEqual([["h7", "k2"]]);
      expect(d.removedHostIds).toEqual(["h9"]);
    }
    // One diff for the 199 hosts that see the shared list, one for h9.
    expect(memo.computed).toBe(2);
  });

  it("a change the mesh keys call irrelevant leaves every host's snapshot as it was", () => {
    fc.assert(
      fc.property(inputsArb, fc.nat(5), fc.nat(3), vmArb(0), hostArb("1"), (inp, vi, hi, newVm, newHost) => {
        // Replace one VM (same id) and one host (same id) with random versions.
        const vm = { ...newVm, id: inp.vms[vi]!.id, name: inp.vms[vi]!.name };
        const host = { alive: inp.hosts[hi]!.alive, host: { ...newHost.host, id: inp.hosts[hi]!.host.id, name: inp.hosts[hi]!.host.name } };
        const next: MeshInputs = { ...inp, vms: inp.vms.map((v, i) => (i === vi ? vm : v)), hosts: inp.hosts.map((h, i) => (i === hi ? host : h)) };
        const relevant = vmMeshKey(inp.vms[vi]!) !== vmMeshKey(vm) || hostMeshKey(inp.hosts[hi]!.host) !== hostMeshKey(host.host);
        if (relevant) return;
        const before = buildMeshView(inp);
        const after = buildMeshView(next);
        for (const h of HOSTS) expect(enc(meshSnapshotFromView(h, after, 16).snapshot)).toBe(enc(meshSnapshotFromView(h, before, 16).snapshot));
      }),
      { numRuns: 500 },
    );
  });
  it("the VM index kept change by change equals one built from scratch, and a snapshot it gave out never changes", () => {
    // Canonical form: host -> network -> the mesh fields of its VMs, sorted.
    const canon = (m: ReadonlyMap<string, ReadonlyMap<string, readonly Vm[]>>) =>
      JSON.stringify(
        [...m]
          .map(([h, nets]) => [h, [...nets].map(([n, vms]) => [n, vms.map((v) => vmMeshKey(v) + v.id).sort()]).sort()] as const)
          .sort((a, b) => (a[0] < b[0] ? -1 : 1)),
      );
    const step = fc.record({ slot: fc.nat(5), vm: fc.option(vmArb(0), { nil: undefined }) });
    fc.assert(
      fc.property(inputsArb, fc.array(step, { maxLength: 25 }), (inp, steps) => {
        const current: (Vm | undefined)[] = [...inp.vms];
        const index = new MeshVmIndex(inp.vms);
        const taken: { snap: ReturnType<MeshVmIndex["snapshot"]>; was: string }[] = [];
        for (const { slot, vm } of steps) {
          const before = current[slot];
          // The slot's VM is rewritten (same id: moved, renumbered, deleted...) or removed.
          const after = vm ? { ...vm, id: `vm${slot}`, name: `vm${slot}` } : undefined;
          current[slot] = after;
          index.change(before, after);
          const snap = index.snapshot();
          const live = current.filter((v): v is Vm => v !== undefined);
          expect(canon(snap)).toBe(canon(new MeshVmIndex(live).snapshot()));
          taken.push({ snap, was: canon(snap) });
          // The views built on it are the views built from scratch.
          const view = { ...meshHosts(inp.hosts), networks: new Map(inp.networks.map((n) => [n.id, n])), byHost: snap };
          const scratch = buildMeshView({ hosts: inp.hosts, vms: live, networks: inp.networks });
          for (const h of HOSTS) expect(enc(meshSnapshotFromView(h, view, 16).snapshot)).toBe(enc(meshSnapshotFromView(h, scratch, 16).snapshot));
        }
        for (const t of taken) expect(canon(t.snap)).toBe(t.was);
      }),
      { numRuns: 300 },
    );
  });
});
