// Mesh deltas (common/mesh-delta.ts): apply(A, diff(A, B)) equals B for any two
// snapshots in canonical order, also after the delta went through the wire
// format; for snapshots the coordinator builds from cluster states too (so
// its order is the one deltas keep). A delta carries only what changed, and
// one that does not fit the snapshot it is applied to is refused.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import {
  MeshViewTracker,
  MEMBER_FIELDS,
  MeshDeltaGap,
  NETWORK_FIELDS,
  VM_FIELDS,
  applyMeshDelta,
  compareMembers,
  compareNetworks,
  compareVms,
  diffMesh,
  emptyDelta,
} from "../../common/mesh-delta.js";
import { buildMeshView, meshSnapshotFromView, type MeshInputs } from "../../coordinator/mesh/snapshot.js";
import { MeshDelta, MeshMember, MeshNetwork, MeshSnapshot, MeshVm } from "../../gen/noid/v1/agent.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Network } from "../../gen/noid/v1/network.js";
import { Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";

const vmArb: fc.Arbitrary<MeshVm> = fc.record({
  vmId: fc.constantFrom("v1", "v2", "v3", "V3", "v4", "v5"),
  mac: fc.constantFrom("02:00:00:00:00:01", "02:00:00:00:00:02"),
  ip: fc.constantFrom("10.0.0.2", "10.0.0.3"),
  networkGroup: fc.constantFrom("", "g"),
  isolated: fc.boolean(),
});

const netArb: fc.Arbitrary<MeshNetwork> = fc.record({
  networkId: fc.constantFrom("n1", "n2", "n3", "n4"),
  // Few VNIs, so that ties are ordered by network id.
  vni: fc.constantFrom(5000, 5001, 5002),
  mode: fc.constantFrom("wireguard", "vxlan"),
  cidr: fc.constantFrom("10.0.0.0/24", "10.1.0.0/24"),
  gateway: fc.constantFrom("10.0.0.1", "10.1.0.1"),
  vms: fc.uniqueArray(vmArb, { selector: (v) => v.vmId, maxLength: 4 }).map((vs) => vs.sort(compareVms)),
  egressDenyAll: fc.boolean(),
  egressAllow: fc.subarray(["1.1.1.1/32", "8.8.8.8/32"]),
  egressDeny: fc.subarray(["9.9.9.9/32"]),
});

const memberArb: fc.Arbitrary<MeshMember> = fc.record({
  hostId: fc.constantFrom("h1", "h2", "h3", "h4", "h5", "h6"),
  // Few names (one differing only in case), so that ties are ordered by host id.
  name: fc.constantFrom("alpha", "beta", "Beta", "gamma"),
  address: fc.constantFrom("10.99.0.1", "10.99.0.2"),
  wireguardPublicKey: fc.constantFrom("k1", "k2", "k3"),
  wireguardPort: fc.constantFrom(51820, 51821),
  meshIp: fc.constantFrom("100.64.0.1", "100.64.0.2"),
  networks: fc.uniqueArray(netArb, { selector: (n) => n.networkId, maxLength: 3 }).map((ns) => ns.sort(compareNetworks)),
});

const snapArb: fc.Arbitrary<MeshSnapshot> = fc.record({
  members: fc.uniqueArray(memberArb, { selector: (m) => m.hostId, maxLength: 6 }).map((ms) => ms.sort(compareMembers)),
  meshPrefixLen: fc.constantFrom(16, 24),
});

/**
 * B as edits of A at every level (random pairs are mostly unrelated; real
 * changes are small): each member, network and VM is kept as it is, dropped,
 * replaced by a random one of the same key, or (members, networks) has its
 * networks or VMs edited in turn; new ones are added from a random snapshot.
 */
const editedArb = (a: MeshSnapshot): fc.Arbitrary<MeshSnapshot> =>
  fc.tuple(snapArb, fc.array(fc.nat(), { minLength: 64, maxLength: 64 })).map(([other, choices]) => {
    let c = 0;
    const pick = (n: number) => choices[c++ % choices.length]! % n;
    const editList = <T,>(list: T[], key: (x: T) => string, fresh: T[], inner: (x: T, y: T) => T, cmp: (x: T, y: T) => number): T[] => {
      const out: T[] = [];
      for (const x of list) {
        const y = fresh.find((f) => key(f) === key(x));
        const p = pick(5);
        if (p === 1) continue;
        if (p === 2 && y) out.push(y);
        else if (p === 3 && y) out.push(inner(x, y));
        else out.push(x);
      }
      for (const y of fresh) if (!out.some((x) => key(x) === key(y)) && !list.some((x) => key(x) === key(y)) && pick(2) === 0) out.push(y);
      return out.sort(cmp);
    };
    const freshVms = other.members.flatMap((m) => m.networks.flatMap((n) => n.vms));
    const freshNets = other.members.flatMap((m) => m.networks);
    const members = editList(
      a.members,
      (m) => m.hostId,
      other.members,
      (m) => ({
        ...m,
        networks: editList(
          m.networks,
          (n) => n.networkId,
          freshNets.filter((n, i) => freshNets.findIndex((x) => x.networkId === n.networkId) === i),
          (n) => ({
            ...n,
            vms: editList(n.vms, (v) => v.vmId, freshVms.filter((v, i) => freshVms.findIndex((x) => x.vmId === v.vmId) === i), (_v, w) => w, compareVms),
          }),
          compareNetworks,
        ),
      }),
      compareMembers,
    );
    return { members, meshPrefixLen: a.meshPrefixLen };
  });

const pairArb = fc.oneof(fc.tuple(snapArb, snapArb), snapArb.chain((a) => fc.tuple(fc.constant(a), editedArb(a))));

const wire = (d: MeshDelta): MeshDelta => MeshDelta.decode(MeshDelta.encode(d).finish());
const enc = (s: MeshSnapshot) => Buffer.from(MeshSnapshot.encode(s).finish()).toString("base64");

describe("mesh deltas", () => {
  it("apply(A, diff(A, B)) equals B, also through the wire format", () => {
    fc.assert(
      fc.property(pairArb, ([a, b]) => {
        const d = diffMesh(a, b);
        expect(applyMeshDelta(a, d)).toEqual(b);
        expect(applyMeshDelta(a, wire(d))).toEqual(b);
        // A is left as it was (the agent's last snapshot may still be in use).
        expect(enc(a)).toBe(enc(structuredClone(a)));
      }),
      { numRuns: 1000 },
    );
  });

  it("the delta is empty exactly when the snapshots are equal", () => {
    fc.assert(
      fc.property(pairArb, ([a, b]) => {
        expect(emptyDelta(diffMesh(a, b)) && a.meshPrefixLen === b.meshPrefixLen).toBe(enc(a) === enc(b));
        expect(emptyDelta(diffMesh(a, structuredClone(a)))).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it("a delta carries only the members, networks and VMs that changed", () => {
    fc.assert(
      fc.property(snapArb, fc.nat(), fc.constantFrom("key", "vm", "leave", "join", "rename"), (a, i, what) => {
        if (a.members.length === 0) return;
        const m = a.members[i % a.members.length]!;
        let b: MeshSnapshot;
        if (what === "key") b = { ...a, members: a.members.map((x) => (x === m ? { ...x, wireguardPublicKey: "rotated" } : x)) };
        else if (what === "leave") b = { ...a, members: a.members.filter((x) => x !== m) };
        else if (what === "join") b = { ...a, members: [...a.members, { ...m, hostId: "joined", name: "beta2" }].sort(compareMembers) };
        else if (what === "rename") b = { ...a, members: a.members.map((x) => (x === m ? { ...x, name: "zz-renamed" } : x)).sort(compareMembers) };
        else {
          if (m.networks.length === 0) return;
          const n = m.networks[0]!;
          const vm = { vmId: "new-vm", mac: "02:00:00:00:00:09", ip: "10.0.0.9", networkGroup: "", isolated: false };
          const n2 = { ...n, vms: [...n.vms, vm].sort(compareVms) };
          b = { ...a, members: a.members.map((x) => (x === m ? { ...x, networks: x.networks.map((y) => (y === n ? n2 : y)) } : x)) };
        }
        const d = diffMesh(a, b);
        if (what === "join") expect(d).toMatchObject({ upserted: [{ hostId: "joined" }], removedHostIds: [], networks: [] });
        if (what === "rename") expect(d).toMatchObject({ upserted: [{ hostId: m.hostId, name: "zz-renamed" }], removedHostIds: [], networks: [] });
        if (what === "key") expect(d).toMatchObject({ upserted: [{ hostId: m.hostId, wireguardPublicKey: "rotated" }], removedHostIds: [], networks: [] });
        if (what === "leave") expect(d).toMatchObject({ upserted: [], removedHostIds: [m.hostId], networks: [] });
        if (what === "vm")
          expect(d).toMatchObject({
            upserted: [],
            removedHostIds: [],
            networks: [{ hostId: m.hostId, upserted: [], removedNetworkIds: [], vms: [{ networkId: m.networks[0]!.networkId, upserted: [{ vmId: "new-vm" }], removedVmIds: [] }] }],
          });
        expect(applyMeshDelta(a, d)).toEqual(b);
      }),
      { numRuns: 500 },
    );
  });

  it("a delta that does not fit the snapshot is refused (the agent then asks for a full one)", () => {
    fc.assert(
      fc.property(pairArb, ([a, b]) => {
        const d = diffMesh(a, b);
        const gone = d.removedHostIds[0];
        if (gone === undefined) return;
        const without = { ...a, members: a.members.filter((m) => m.hostId !== gone) };
        expect(() => applyMeshDelta(without, d)).toThrow(MeshDeltaGap);
      }),
      { numRuns: 500 },
    );
    const a: MeshSnapshot = { members: [], meshPrefixLen: 16 };
    const d: MeshDelta = { baseVersion: 1, meshPrefixLen: 16, upserted: [], removedHostIds: [], networks: [{ hostId: "h1", upserted: [], removedNetworkIds: ["n1"], vms: [] }] };
    expect(() => applyMeshDelta(a, d)).toThrow(/host h1 is not in the snapshot/);
  });

  it("every field of the mesh messages is compared (a new proto field must be added to the lists)", () => {
    expect(Object.keys(MeshMember.fromPartial({})).sort()).toEqual([...MEMBER_FIELDS, "networks"].sort());
    expect(Object.keys(MeshNetwork.fromPartial({})).sort()).toEqual([...NETWORK_FIELDS, "vms"].sort());
    expect(Object.keys(MeshVm.fromPartial({})).sort()).toEqual([...VM_FIELDS].sort());
    expect(Object.keys(MeshSnapshot.fromPartial({})).sort()).toEqual(["meshPrefixLen", "members"].sort());
  });

  // The coordinator's snapshots, from random cluster states: their order is the one deltas keep.
  const HOSTS = ["1", "2", "3", "4"];
  const NETS = [
    Network.fromPartial({ id: "a", name: "a", owner: "a", cidr: "10.0.0.0/24", vni: 5000, gateway: "10.0.0.1" }),
    Network.fromPartial({ id: "b", name: "b", owner: "b", cidr: "10.0.1.0/24", vni: 5001, gateway: "10.0.1.1" }),
  ];
  const inputsArb: fc.Arbitrary<MeshInputs> = fc.record({
    hosts: fc.tuple(
      ...HOSTS.map((id) =>
        fc.record({ alive: fc.boolean(), key: fc.constantFrom("k1", "k2"), name: fc.constantFrom(`h${id}`, "same") }).map((h) => ({
          alive: h.alive,
          host: Host.fromPartial({ id, name: h.name, address: "10.99.0.1", meshIp: `100.64.0.${id}`, wireguardPublicKey: h.key, wireguardPort: 51820 }),
        })),
      ),
    ),
    vms: fc.tuple(
      ...Array.from({ length: 6 }, (_, i) =>
        fc
          .record({ hostId: fc.constantFrom("", ...HOSTS), networkId: fc.constantFrom("a", "b"), ip: fc.constantFrom(`10.0.0.${i}`, `10.0.0.${i + 50}`), deleted: fc.boolean() })
          .map((v) =>
            Vm.fromPartial({
              id: `vm${i}`,
              desiredState: v.deleted ? VmDesiredState.VM_DESIRED_STATE_DELETED : VmDesiredState.VM_DESIRED_STATE_RUNNING,
              spec: { vcpus: 1, memoryMb: 64 },
              status: { hostId: v.hostId, networkId: v.networkId, mac: `02:00:00:00:00:0${i}`, ip: v.ip },
            }),
          ),
      ),
    ),
    networks: fc.subarray(NETS),
    meshPrefixLen: fc.constant(16),
  });

  it("apply(A, diff(A, B)) equals B for the coordinator's snapshots of any two cluster states", () => {
    fc.assert(
      fc.property(inputsArb, inputsArb, fc.constantFrom(...HOSTS), (x, y, h) => {
        const a = meshSnapshotFromView(h, buildMeshView(x), 16).snapshot;
        const b = meshSnapshotFromView(h, buildMeshView(y), 16).snapshot;
        expect(enc(applyMeshDelta(a, wire(diffMesh(a, b))))).toBe(enc(b));
      }),
      { numRuns: 1000 },
    );
  });
});

describe("a host's mesh view tracker (agent and simulated hosts)", () => {
  it("applies deltas to the last view, asks once for a full snapshot after a gap, drops deltas until it comes", () => {
    fc.assert(
      fc.property(snapArb, snapArb, snapArb, (a, b, c) => {
        const t = new MeshViewTracker();
        expect(t.take({ version: 1, kind: { $case: "full", value: a } })).toEqual({ kind: "snapshot", snapshot: a });
        const ab = t.take({ version: 2, kind: { $case: "delta", value: { ...diffMesh(a, b), baseVersion: 1 } } });
        expect(ab.kind === "snapshot" && MeshSnapshot.toJSON(ab.snapshot)).toEqual(MeshSnapshot.toJSON(b));
        // Version 3 was lost: the delta for 4 does not fit.
        const gap = t.take({ version: 4, kind: { $case: "delta", value: { ...diffMesh(b, c), baseVersion: 3 } } });
        expect(gap).toMatchObject({ kind: "resync", haveVersion: 2 });
        expect(t.take({ version: 5, kind: { $case: "delta", value: { ...diffMesh(b, c), baseVersion: 2 } } })).toEqual({ kind: "ignore" });
        expect(t.take({ version: 6, kind: { $case: "full", value: c } })).toEqual({ kind: "snapshot", snapshot: c });
        t.reset();
        // A new stream: a delta before any full snapshot does not fit.
        expect(t.take({ version: 7, kind: { $case: "delta", value: { ...diffMesh(c, a), baseVersion: 6 } } })).toMatchObject({ kind: "resync", haveVersion: 0 });
      }),
      { numRuns: 50 },
    );
  });
});
