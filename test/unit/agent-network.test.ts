// The agent's pure network planning: snapshot -> topology, attachments, peer policy and
// guard spec; drop counters -> aggregated security events; the coordinator's flood guard.
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { attachedSpec } from "../../agent/network/attach.js";
import { DropAggregator } from "../../agent/network/security.js";
import { PeerLiveness } from "../../agent/network/liveness.js";
import { degradedReasons } from "../../coordinator/mesh/health.js";
import { allowedPeers, guardSpecOf, meshCidrOf, meshView } from "../../agent/network/view.js";
import { dhcpNetworksOf } from "../../agent/network/dhcp.js";
import { SecurityAudit } from "../../coordinator/security-events.js";
import type { AuditInput } from "../../coordinator/audit-log.js";
import type { MeshMember, MeshSnapshot, MeshVm } from "../../gen/noid/v1/agent.js";
import { generateKeyPair } from "../../mesh/keys.js";
import { guardDrift, renderGuards } from "../../mesh/guards.js";

const keys = [generateKeyPair(), generateKeyPair(), generateKeyPair()];
const vm = (vmId: string, n: number, extra: Partial<MeshVm> = {}): MeshVm => ({
  vmId,
  mac: `02:00:00:00:00:${n.toString(16).padStart(2, "0")}`,
  ip: `10.0.0.${n}`,
  networkGroup: "",
  isolated: false,
  ...extra,
});
const net = (vms: MeshVm[], id = "net-a", vni = 100) => ({
  networkId: id,
  vni,
  mode: "wireguard",
  cidr: "10.0.0.0/24",
  gateway: "10.0.0.1",
  vms,
  egressDenyAll: false,
  egressAllow: [],
  egressDeny: [],
});
const member = (i: number, networks: MeshMember["networks"], key = keys[i - 1]!.publicKey): MeshMember => ({
  hostId: `h${i}`,
  name: `host${i}`,
  address: `192.168.77.${i}`,
  wireguardPublicKey: key,
  wireguardPort: 51820,
  meshIp: `100.64.0.${i}`,
  networks,
});
const settings = { wgIfname: "wgtest1", uplinkMtu: 1500 };

function snapshot(): MeshSnapshot {
  return {
    meshPrefixLen: 16,
    members: [
      member(1, [net([vm("a1", 2), vm("ai", 5, { isolated: true }), vm("r1", 6, { networkGroup: "red" })]), net([vm("b1", 2)], "net-b", 101)]),
      member(2, [net([vm("a2", 3), vm("u2", 7, { networkGroup: "blue" })])]),
      member(3, [net([vm("a3", 4), vm("r3", 8, { networkGroup: "red" })])]),
    ],
  };
}

describe("agent network view", () => {
  it("maps the snapshot onto the topology with this host's interface name and the overlay MTU", () => {
    const v = meshView(snapshot(), "h1", settings);
    expect(v.meshCidr).toBe("100.64.0.0/16");
    expect(v.desired.wg.ifname).toBe("wgtest1");
    expect(v.desired.wg.peers.map((p) => p.hostId)).toEqual(["h2", "h3"]);
    expect(v.local.get("a1")).toEqual({
      vmId: "a1", networkId: "net-a", vni: 100, bridge: "vmnet100", mtu: 1390, gateway: "10.0.0.1", prefixLen: 24, mac: "02:00:00:00:00:02", ip: "10.0.0.2",
    });
    expect(v.local.get("b1")?.bridge).toBe("vmnet101");
    expect(v.local.has("a2")).toBe(false);
    // Tenant B is on host 1 only: no FDB entries toward other hosts for it.
    expect(v.desired.networks.find((n) => n.vni === 101)?.fdb).toEqual([]);
  });

  it("DHCP serves, per network bridge of this host, only this host's VMs, with the bridge's MTU", () => {
    const v = meshView(snapshot(), "h1", settings);
    const byVni = new Map(dhcpNetworksOf(v).map((n) => [n.vni, n]));
    expect([...byVni.keys()].sort()).toEqual([100, 101]);
    expect(byVni.get(100)).toMatchObject({ cidr: "10.0.0.0/24", gateway: "10.0.0.1", mtu: 1390 });
    // a2, a3 (other hosts) are not reserved here; the isolated and grouped local VMs are.
    expect(byVni.get(100)!.vms.map((x) => x.ip).sort()).toEqual(["10.0.0.2", "10.0.0.5", "10.0.0.6"]);
    expect(byVni.get(101)!.vms).toEqual([{ mac: "02:00:00:00:00:02", ip: "10.0.0.2" }]);
  });

  it("leaves out other hosts that registered no WireGuard key instead of failing", () => {
    const s = snapshot();
    s.members[2] = member(3, s.members[2]!.networks, "");
    expect(meshView(s, "h1", settings).desired.wg.peers.map((p) => p.hostId)).toEqual(["h2"]);
    expect(() => meshView(s, "h9", settings)).toThrow(/not in its own mesh snapshot/);
  });

  it("lets an isolated VM reach only its gateway and network groups only their own members, everywhere", () => {
    const v = meshView(snapshot(), "h1", settings);
    expect(allowedPeers(v, "net-a", "a1")).toEqual(["10.0.0.1", "10.0.0.3", "10.0.0.4"]);
    expect(allowedPeers(v, "net-a", "ai")).toEqual(["10.0.0.1"]);
    expect(allowedPeers(v, "net-a", "r1")).toEqual(["10.0.0.1", "10.0.0.8"]);
    expect(allowedPeers(v, "net-b", "b1")).toEqual(["10.0.0.1"]);
  });

  it("peer policy is symmetric: x may reach y exactly when y may reach x", () => {
    const arb = fc.array(fc.record({ group: fc.constantFrom("", "red", "blue"), isolated: fc.boolean(), host: fc.integer({ min: 1, max: 3 }) }), { minLength: 1, maxLength: 12 });
    fc.assert(
      fc.property(arb, (defs) => {
        const vms = defs.map((d, i) => ({ ...vm(`v${i}`, i + 2, { networkGroup: d.group, isolated: d.isolated }), host: d.host }));
        const members = [1, 2, 3].map((h) => member(h, vms.some((x) => x.host === h) ? [net(vms.filter((x) => x.host === h))] : []));
        const snap: MeshSnapshot = { meshPrefixLen: 16, members };
        for (const x of vms) {
          const vx = meshView(snap, `h${x.host}`, settings);
          for (const y of vms) {
            if (x === y) continue;
            const vy = meshView(snap, `h${y.host}`, settings);
            const xy = allowedPeers(vx, "net-a", x.vmId).includes(y.ip);
            const yx = allowedPeers(vy, "net-a", y.vmId).includes(x.ip);
            expect(xy).toBe(yx);
            expect(xy).toBe(!x.isolated && !y.isolated && x.networkGroup === y.networkGroup);
          }
        }
      }),
      { numRuns: 40 },
    );
  });

  it("guards exactly the local VMs whose port exists, with their peer sets and the VXLAN uplinks", () => {
    const v = meshView(snapshot(), "h1", settings);
    const spec = guardSpecOf(v, new Map([["a1", "nv0000000001"], ["ai", "nv0000000002"], ["zz", "nv0000000009"]]));
    expect(spec.vms.map((g) => g.vmId)).toEqual(["a1", "ai"]);
    expect(spec.vms[1]!.peers).toEqual({ cidr: "10.0.0.0/24", allowed: ["10.0.0.1"] });
    expect(spec.uplinks).toEqual([{ port: "vx100", gateway: "10.0.0.1" }, { port: "vx101", gateway: "10.0.0.1" }]);
    const text = renderGuards(spec);
    expect(text).toContain(`iifname "nv0000000002" ether type ip ip daddr 10.0.0.0/24 ip daddr != { 10.0.0.1 } counter name "peer_ai" drop`);
    expect(text).toContain(`iifname "nv0000000002" ether type arp arp daddr ip 10.0.0.0/24 arp daddr ip != { 10.0.0.1 } counter name "arppeer_ai" drop`);
    expect(guardDrift(spec, undefined)).not.toEqual([]);
  });

  it("puts a VM's create spec on its network", () => {
    const v = meshView(snapshot(), "h1", settings);
    const spec = attachedSpec({ id: "a1", vcpus: 1, memoryMb: 64, diskGb: 1, image: "", net: { mac: "02:aa:aa:aa:aa:aa", ip: "", networkId: "net-a" } }, v.local.get("a1")!);
    expect(spec.net).toEqual({ mac: "02:00:00:00:00:02", ip: "10.0.0.2", prefixLen: 24, bridge: "vmnet100", mtu: 1390, gateway: "10.0.0.1", networkId: "net-a" });
    expect(meshCidrOf("100.64.3.9", 16)).toBe("100.64.0.0/16");
  });
});

describe("security events", () => {
  const c = (vm: string, kind: "ip" | "mac", packets: number) => ({ vm, kind, packets, bytes: packets * 60 });

  it("reports increases of drop counters, aggregated per VM and kind, after a baseline", () => {
    const agg = new DropAggregator(5000);
    expect(agg.observe([c("a1", "ip", 10)], 0)).toEqual([]); // baseline: drops from before this agent
    expect(agg.observe([c("a1", "ip", 10)], 1000)).toEqual([]);
    expect(agg.observe([c("a1", "ip", 13)], 2000)).toEqual([{ vmId: "a1", kind: "ip", count: 3 }]);
    expect(agg.observe([c("a1", "ip", 20)], 3000)).toEqual([]); // within the interval: held back
    expect(agg.observe([c("a1", "ip", 25)], 7000)).toEqual([{ vmId: "a1", kind: "ip", count: 12 }]);
    // A VM that appears later counts from zero; a recreated counter from its new value.
    expect(agg.observe([c("a1", "ip", 25), c("b1", "mac", 2)], 8000)).toEqual([{ vmId: "b1", kind: "mac", count: 2 }]);
    expect(agg.observe([c("a1", "ip", 1), c("b1", "mac", 2)], 20_000)).toEqual([{ vmId: "a1", kind: "ip", count: 1 }]);
  });

  it("the coordinator writes one audit entry per source and window and sums the rest into the next", async () => {
    const written: AuditInput[] = [];
    const audit = new SecurityAudit(async (e) => void written.push(e), { now: () => new Date() }, 300, 3);
    const ev = (vmId: string, count: number) => ({ hostId: "h1", hostName: "host1", vmId, owner: "alice", kind: "ip", count, detail: "dropped" });
    await audit.record(ev("a1", 1));
    for (let i = 0; i < 50; i++) await audit.record(ev("a1", 2));
    expect(written).toHaveLength(1);
    expect(written[0]).toMatchObject({ event: "security.ip", vm: "a1", host: "host1", user: "alice", success: false });
    await new Promise((r) => setTimeout(r, 600));
    expect(written).toHaveLength(2);
    expect(written[1]!.detail).toContain("count 100 (50 reports aggregated)");
    // The global bound holds across sources.
    for (const v of ["x1", "x2", "x3", "x4", "x5"]) await audit.record(ev(v, 1));
    expect(written.length).toBeLessThanOrEqual(2 + 3);
    expect(audit.dropped).toBeGreaterThan(0);
    audit.stop();
  });
});

describe("mesh health", () => {
  const peer = (publicKey: string, txBytes: number, rxBytes: number) => ({ publicKey, allowedIps: [], latestHandshake: 0, rxBytes, txBytes });

  it("calls a peer unreachable only when we keep sending and nothing comes back for the window", () => {
    const l = new PeerLiveness(25_000, 3);
    expect(l.observe([peer("k2", 0, 0), peer("k3", 0, 0)], 0)).toEqual([]);
    expect(l.observe([peer("k2", 200, 0), peer("k3", 32, 0)], 5000)).toEqual([]);
    expect(l.observe([peer("k2", 400, 0), peer("k3", 32, 0)], 10_000)).toEqual([]);
    expect(l.observe([peer("k2", 600, 0), peer("k3", 32, 0)], 20_000)).toEqual([]); // not yet a window
    // k2: three rises and no answer; k3: one keepalive of ours, which gets no answer by design.
    expect(l.observe([peer("k2", 600, 0), peer("k3", 32, 0)], 30_000)).toEqual(["k2"]);
    expect(l.observe([peer("k2", 800, 92), peer("k3", 32, 0)], 32_000)).toEqual([]); // an answer clears it
    expect(l.observe([peer("k2", 800, 92)], 60_000)).toEqual([]); // silence after nothing sent is fine
  });

  it("degrades the host that cannot apply its mesh and the host others get no answer from", () => {
    const names = (id: string) => `host${id.slice(-1)}`;
    const r = degradedReasons(
      new Map([
        ["h1", { meshError: "", unreachablePeers: ["h3"] }],
        ["h2", { meshError: "wireguard-go did not start", unreachablePeers: ["h3"] }],
        ["h3", { meshError: "", unreachablePeers: [] }],
      ]),
      names,
    );
    expect(Object.fromEntries(r)).toEqual({
      h2: "mesh not applied: wireguard-go did not start",
      h3: "no WireGuard answer to host1, host2",
    });
  });
});
