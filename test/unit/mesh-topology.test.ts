import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { FLOOD_MAC, type MeshMember, type MeshNetwork, hostMesh, meshIpFor, mtus } from "../../mesh/topology.js";

const settings = { meshCidr: "100.64.0.0/16", uplinkMtu: 1500 };
const key = (i: number): string => Buffer.alloc(32, i).toString("base64");
const net = (id: string, vni: number, mode: MeshNetwork["mode"], vms: [string, string][]): MeshNetwork => ({
  networkId: id, vni, mode, cidr: "10.20.0.0/24", gateway: "10.20.0.1", vms: vms.map(([mac, ip]) => ({ mac, ip })),
});
const member = (i: number, networks: MeshNetwork[]): MeshMember => ({
  hostId: `host-${i}`, name: `h${i}`, underlay: `10.99.0.${i}`, wgPublicKey: key(i), wgPort: 51820,
  meshIp: meshIpFor(settings.meshCidr, i), networks,
});

describe("mesh topology", () => {
  const members = [
    member(1, [net("a", 1001, "wireguard", [["02:00:00:00:0a:01", "10.20.0.11"]]), net("b", 1002, "vxlan", [["02:00:00:00:0b:01", "10.20.0.11"]])]),
    member(2, [net("a", 1001, "wireguard", [["02:00:00:00:0a:02", "10.20.0.12"]])]),
    member(3, [net("b", 1002, "vxlan", [["02:00:00:00:0b:03", "10.20.0.13"]]), net("a", 1001, "wireguard", [])]),
  ];

  it("gives a host its peers, devices, flood and per-MAC entries", () => {
    const d = hostMesh(members, "host-1", settings);
    expect(d.wg).toMatchObject({ ifname: "wg-noid", listenPort: 51820, address: "100.64.0.1/16", mtu: 1440, publicKey: key(1) });
    expect(d.wg.peers.map((p) => [p.hostId, p.endpoint, p.allowedIps])).toEqual([
      ["host-2", "10.99.0.2:51820", ["100.64.0.2/32"]],
      ["host-3", "10.99.0.3:51820", ["100.64.0.3/32"]],
    ]);
    const [a, b] = d.networks;
    expect(a).toMatchObject({
      vxlan: { name: "vx1001", vni: 1001, local: "100.64.0.1", port: 4789, mtu: 1390 },
      bridge: { name: "vmnet1001", address: "10.20.0.1/24", mtu: 1390, mac: "02:6e:67:00:03:e9" },
    });
    // host-3 has network a but no VM in it: no entry toward it.
    expect(a?.fdb).toEqual([
      { mac: FLOOD_MAC, dst: "100.64.0.2" },
      { mac: "02:00:00:00:0a:02", dst: "100.64.0.2" },
    ]);
    // vxlan mode: VTEPs are underlay addresses, MTU only loses the VXLAN header.
    expect(b).toMatchObject({ vxlan: { name: "vx1002", local: "10.99.0.1", mtu: 1450 }, bridge: { mtu: 1450 } });
    expect(b?.fdb).toEqual([
      { mac: FLOOD_MAC, dst: "10.99.0.3" },
      { mac: "02:00:00:00:0b:03", dst: "10.99.0.3" },
    ]);
  });

  it("derives mesh IPs and MTUs", () => {
    expect(meshIpFor("100.64.0.0/16", 1)).toBe("100.64.0.1");
    expect(meshIpFor("100.64.0.0/16", 300)).toBe("100.64.1.44");
    expect(() => meshIpFor("100.64.0.0/30", 3)).toThrow(/does not fit/);
    expect(mtus(1500)).toEqual({ wg: 1440, vxlanOverWg: 1390, vxlan: 1450 });
  });

  it("refuses inconsistent input", () => {
    expect(() => hostMesh(members, "host-9", settings)).toThrow(/not a mesh member/);
    expect(() => hostMesh([...members, member(1, [])], "host-1", settings)).toThrow(/twice/);
    const odd = [member(1, [net("a", 1001, "wireguard", [])]), member(2, [net("a", 1005, "wireguard", [["02:00:00:00:00:01", "10.20.0.2"]])])];
    expect(() => hostMesh(odd, "host-1", settings)).toThrow(/differs/);
    expect(() => hostMesh([{ ...member(1, []), meshIp: "10.0.0.1" }], "host-1", settings)).toThrow(/not in/);
  });
});

// Random meshes: up to 6 hosts, 3 networks, each host carrying some with 0-3 VMs (MACs unique).
const meshArb = fc
  .record({
    hosts: fc.integer({ min: 1, max: 6 }),
    nets: fc.uniqueArray(fc.integer({ min: 1, max: 0xffffff }), { minLength: 1, maxLength: 3 }),
    modes: fc.array(fc.constantFrom("wireguard" as const, "vxlan" as const), { minLength: 3, maxLength: 3 }),
    presence: fc.array(fc.array(fc.integer({ min: -1, max: 3 }), { minLength: 3, maxLength: 3 }), { minLength: 6, maxLength: 6 }),
  })
  .map(({ hosts, nets, modes, presence }) => {
    let macN = 0;
    const ms: MeshMember[] = [];
    for (let h = 1; h <= hosts; h++) {
      const networks: MeshNetwork[] = [];
      nets.forEach((vni, j) => {
        const count = presence[h - 1]?.[j] ?? -1; // -1: host does not carry the network
        if (count < 0) return;
        const vms: [string, string][] = Array.from({ length: count }, () => {
          macN++;
          return [`02:00:00:00:${(macN >> 8).toString(16).padStart(2, "0")}:${(macN & 0xff).toString(16).padStart(2, "0")}`, `10.20.0.${macN}`];
        });
        networks.push(net(`n${vni}`, vni, modes[j] ?? "wireguard", vms));
      });
      ms.push(member(h, networks));
    }
    return ms;
  });

const vteps = (m: MeshMember): string[] => [m.meshIp, m.underlay];

describe("mesh topology properties", () => {
  it("peering is symmetric and never includes self", () => {
    fc.assert(
      fc.property(meshArb, (ms) => {
        const d = new Map(ms.map((m) => [m.hostId, hostMesh(ms, m.hostId, settings)]));
        for (const a of ms) {
          const peersA = d.get(a.hostId)!.wg.peers.map((p) => p.hostId);
          expect(peersA).not.toContain(a.hostId);
          for (const b of ms) {
            if (a === b) continue;
            expect(peersA.includes(b.hostId)).toBe(d.get(b.hostId)!.wg.peers.some((p) => p.hostId === a.hostId));
          }
        }
      }),
    );
  });

  it("FDB entries point only to other hosts with VMs in that network, and cover every remote VM", () => {
    fc.assert(
      fc.property(meshArb, (ms) => {
        for (const self of ms) {
          const d = hostMesh(ms, self.hostId, settings);
          for (const n of d.networks) {
            const holders = ms.filter((m) => m !== self && (m.networks.find((x) => x.networkId === n.networkId)?.vms.length ?? 0) > 0);
            const allowed = new Set(holders.map((m) => (n.mode === "wireguard" ? m.meshIp : m.underlay)));
            for (const e of n.fdb) {
              expect(allowed.has(e.dst)).toBe(true);
              expect(vteps(self)).not.toContain(e.dst);
            }
            expect(n.fdb.filter((e) => e.mac === FLOOD_MAC).length).toBe(holders.length);
            for (const m of holders) {
              for (const vm of m.networks.find((x) => x.networkId === n.networkId)!.vms) {
                expect(n.fdb.some((e) => e.mac === vm.mac)).toBe(true);
              }
            }
          }
        }
      }),
    );
  });

  it("removing a host removes its peer and every FDB entry toward it", () => {
    fc.assert(
      fc.property(meshArb, fc.nat(), (ms, pick) => {
        if (ms.length < 2) return;
        const gone = ms[pick % ms.length]!;
        const rest = ms.filter((m) => m !== gone);
        for (const self of rest) {
          const d = hostMesh(rest, self.hostId, settings);
          expect(d.wg.peers.some((p) => p.publicKey === gone.wgPublicKey)).toBe(false);
          for (const n of d.networks) for (const e of n.fdb) expect(vteps(gone)).not.toContain(e.dst);
        }
      }),
    );
  });

  it("device names are unique and fit in 15 characters", () => {
    fc.assert(
      fc.property(meshArb, (ms) => {
        for (const self of ms) {
          const d = hostMesh(ms, self.hostId, settings);
          const names = [d.wg.ifname, ...d.networks.flatMap((n) => [n.vxlan.name, n.bridge.name])];
          expect(new Set(names).size).toBe(names.length);
          for (const n of names) expect(n.length).toBeLessThanOrEqual(15);
        }
      }),
    );
  });
});
