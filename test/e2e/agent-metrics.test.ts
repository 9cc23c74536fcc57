// Privileged: the agent's /metrics on a 2-host namespace lab. A real sandbox VM
// runs through the real reconcile loop and an instrumented driver; its traffic
// moves the per-VM counters read from its host-side port; a spoofed packet
// moves the guard drop counter; a real wireguard-go mesh between the two hosts
// shows its peer and handshake age. Everything is read over HTTP.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { serveMetrics, type MetricsServer } from "../../common/metrics-http.js";
import { type ProcessRef, isAlive, killProcess, run } from "../../common/run.js";
import { createLab, destroyLab, labLeftovers, type Lab } from "../../deploy/lab/lab.js";
import { pingArgv } from "../../deploy/lab/probe.js";
import { SandboxDriver } from "../../agent/drivers/sandbox/sandbox.js";
import { hostPort } from "../../agent/drivers/sandbox/names.js";
import { AgentMetrics, instrumentDriver, readLinkStats } from "../../agent/metrics.js";
import { ReconcileLoop } from "../../agent/reconcile/loop.js";
import { DriverSet } from "../../agent/drivers/driver-set.js";
import type { DesiredVm } from "../../agent/reconcile/types.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import { silentLogger } from "../../common/logger.js";
import { applyHostMesh } from "../../mesh/apply.js";
import { applyGuards, readGuardCounters } from "../../mesh/guards-apply.js";
import { applyMonitor, readMonitor } from "../../agent/network/monitor-apply.js";
import type { MonitorSpec } from "../../agent/network/monitor-rules.js";
import type { GuardSpec } from "../../mesh/guards.js";
import { type WgKeyPair, generateKeyPair } from "../../mesh/keys.js";
import { createMountNs, removeMountNsDir } from "../../mesh/mountns.js";
import { readWgDump } from "../../mesh/wireguard.js";
import { bridgeName, vxlanName } from "../../mesh/names.js";
import { type MeshMember, hostMesh, meshIpFor } from "../../mesh/topology.js";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { sampleValue, scrape, type Exposition } from "../helpers/exposition.js";
import { selectors, selects } from "../helpers/promql.js";
import { eventually, startTestCoordinator } from "../helpers/coordinator.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { NoidApiError } from "../../sdk/index.js";

const prefix = `am${randomBytes(3).toString("hex")}`;
const mntDir = `/run/noid-mesh-${prefix}`;
const settings = { meshCidr: "100.64.0.0/16", uplinkMtu: 1500 };
const vmId = `vm-${randomBytes(5).toString("hex")}`;
const VM_IP = "10.202.0.11";
const desired: DesiredVm = {
  id: vmId,
  state: "running",
  driver: "",
  spec: { id: vmId, vcpus: 1, memoryMb: 128, diskGb: 1, image: "", net: { mac: "02:00:00:cd:00:11", ip: VM_IP, prefixLen: 24, bridge: "vmbr0" } },
};

let lab: Lab;
let stateDir: string;
let raw: SandboxDriver;
let loop: ReconcileLoop;
let metrics: AgentMetrics;
let server: MetricsServer;
const keys: WgKeyPair[] = [];
const mountNs: string[] = [];
const wgProcs: ProcessRef[] = [];

const h1 = () => lab.hosts[0]!.netns;
const guardSpec = (): GuardSpec => ({ vms: [{ vmId, port: hostPort(vmId), mac: desired.spec.net.mac, ip: VM_IP }], uplinks: [] });
// One tenant network on both hosts, with one plain-netns "VM" each (x1 on h1, x2 on h2).
const VNI = 1202;
const NET_VMS = [
  { name: "x1", host: 0, mac: "02:00:00:cd:01:01", ip: "10.203.0.11" },
  { name: "x2", host: 1, mac: "02:00:00:cd:01:02", ip: "10.203.0.12" },
];
const members = (withNetwork = false): MeshMember[] =>
  lab.hosts.map((h, i) => ({
    hostId: `host-${i + 1}`, name: h.name, underlay: h.address, wgPublicKey: keys[i]!.publicKey, wgPort: 51820, meshIp: meshIpFor(settings.meshCidr, i + 1),
    networks: withNetwork
      ? [{ networkId: "n1", vni: VNI, mode: "wireguard" as const, cidr: "10.203.0.0/24", gateway: "10.203.0.1", vms: NET_VMS.filter((v) => v.host === i).map((v) => ({ mac: v.mac, ip: v.ip })) }]
      : [],
  }));

async function applyMesh(withNetwork: boolean): Promise<void> {
  const all = members(withNetwork);
  for (const [i, h] of lab.hosts.entries()) {
    const r = await applyHostMesh(hostMesh(all, `host-${i + 1}`, settings), {
      runner: run,
      netns: h.netns,
      mountNs: mountNs[i]!,
      privateKey: keys[i]!.privateKey,
      spawner: async (argv, o) => (await lab.spawn(h, argv, o ?? {})).pid,
      wgLogFile: join(lab.dir, `wg-${h.name}.log`),
    });
    if (r.wireguard.process) wgProcs.push(r.wireguard.process);
  }
}

async function until<T>(f: () => Promise<T | undefined | false>, what: string, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

beforeAll(async () => {
  lab = await createLab({ prefix, hosts: 2 });
  stateDir = mkdtempSync(join(tmpdir(), "noid-agent-metrics-"));
  await lab.exec("h1", ["ip", "link", "add", "vmbr0", "type", "bridge"]);
  await lab.exec("h1", ["ip", "addr", "add", "10.202.0.1/24", "dev", "vmbr0"]);
  await lab.exec("h1", ["ip", "link", "set", "vmbr0", "up"]);
  for (const h of lab.hosts) {
    keys.push(generateKeyPair());
    mountNs.push(await createMountNs(mntDir, h.name, { runner: run, netns: h.netns }));
  }

  metrics = new AgentMetrics();
  raw = new SandboxDriver({ stateDir, nsPrefix: h1(), netns: h1() });
  loop = new ReconcileLoop({ drivers: new DriverSet([instrumentDriver(raw, metrics)]), logger: silentLogger(), onStatus: () => undefined, observer: metrics.reconcile });
  metrics.setSources({ reports: () => loop.lastReports(), vmPorts: () => raw.list(), linkStats: () => readLinkStats(run, h1()) });
  server = await serveMetrics(metrics.registry, "127.0.0.1:0");
});

afterAll(async () => {
  await loop?.stop();
  await raw?.destroy(vmId).catch(() => undefined);
  await server?.close();
  for (const p of wgProcs) if (isAlive(p)) await killProcess(p);
  await destroyLab(prefix);
  await removeMountNsDir(mntDir, { runner: run });
  rmSync(stateDir, { recursive: true, force: true });
  expect(await labLeftovers(prefix)).toEqual([]);
});

describe("agent metrics", () => {
  it("reports VMs by phase, reconcile passes and driver operations", async () => {
    await loop.start();
    loop.setDesired([desired]);
    await until(async () => loop.lastReports().some((r) => r.vmId === vmId && r.phase === VmPhase.VM_PHASE_RUNNING), "the VM to run");
    await loop.idle();
    const m = await scrape(server.address);
    expect(sampleValue(m, "noid_agent_vms", { phase: "running" })).toBe(1);
    expect(sampleValue(m, "noid_agent_vms", { phase: "failed" })).toBe(0);
    expect(sampleValue(m, "noid_agent_reconcile_runs_total", { result: "converged" })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(m, "noid_agent_reconcile_duration_seconds_count")).toBeGreaterThanOrEqual(1);
    for (const op of ["recover", "list", "create", "start"]) {
      expect(sampleValue(m, "noid_agent_driver_operations_total", { driver: "sandbox", op, result: "ok" }), op).toBeGreaterThanOrEqual(1);
      expect(sampleValue(m, "noid_agent_driver_operation_duration_seconds_count", { driver: "sandbox", op }), op).toBeGreaterThanOrEqual(1);
    }
  });

  it("counts a VM's bytes and packets from its host-side port", async () => {
    const before = await scrape(server.address);
    const sent0 = sampleValue(before, "noid_agent_vm_sent_packets_total", { vm: vmId }) ?? 0;
    const recv0 = sampleValue(before, "noid_agent_vm_received_bytes_total", { vm: vmId }) ?? 0;
    await until(async () => (await raw.exec(vmId, pingArgv("10.202.0.1", { count: 3, waitS: 1 }))).exitCode === 0, "the VM to reach its gateway");
    const after = await scrape(server.address);
    // At least the three echo requests and three replies.
    expect(sampleValue(after, "noid_agent_vm_sent_packets_total", { vm: vmId })).toBeGreaterThanOrEqual(sent0 + 3);
    expect(sampleValue(after, "noid_agent_vm_received_bytes_total", { vm: vmId })).toBeGreaterThanOrEqual(recv0 + 3 * 84);
    expect(sampleValue(after, "noid_agent_vm_sent_bytes_total", { vm: vmId })).toBeGreaterThan(0);
    expect(after.types.get("noid_agent_vm_sent_bytes_total")).toBe("counter");
  });

  it("counts guard drops by kind through the mesh controller's hook", async () => {
    expect(await applyGuards(guardSpec(), { runner: run, netns: h1() })).not.toEqual([]);
    metrics.setGuardReader(() => readGuardCounters(guardSpec(), { runner: run, netns: h1() }));
    const before = sampleValue(await scrape(server.address), "noid_agent_guard_drops_total", { vm: vmId, kind: "ip" });
    expect(before).toBe(0);
    // A spoofed source address from the VM: dropped at its port (a single bounded attempt).
    await raw.exec(vmId, ["ip", "addr", "add", "10.202.0.99/24", "dev", "eth0"]);
    const ping = pingArgv("10.202.0.1", { count: 2, waitS: 1 });
    expect((await raw.exec(vmId, [...ping.slice(0, -1), "-I", "10.202.0.99", ping.at(-1)!])).exitCode).not.toBe(0);
    await raw.exec(vmId, ["ip", "addr", "del", "10.202.0.99/24", "dev", "eth0"]);
    const after = await scrape(server.address);
    expect(sampleValue(after, "noid_agent_guard_drops_total", { vm: vmId, kind: "ip" })).toBeGreaterThanOrEqual(2);
    expect(sampleValue(after, "noid_agent_guard_drops_total", { vm: vmId, kind: "dhcp" })).toBe(0);
  });

  it("splits a VM's traffic into private and egress from the monitor table's counters", async () => {
    const spec: MonitorSpec = {
      windowSeconds: 60,
      setSize: 1024,
      vms: [{ vmId, port: hostPort(vmId), mac: desired.spec.net.mac, ip: VM_IP, networkId: "n0", vni: 1201, cidr: "10.202.0.0/24", listen: [] }],
    };
    await applyMonitor(spec, { runner: run, netns: h1() });
    metrics.setMonitorReader(() => readMonitor(spec, { runner: run, netns: h1() }));
    const sel = (scope: string, direction: string) => ({ vm: vmId, network: "n0", scope, direction });
    const before = await scrape(server.address);
    expect(sampleValue(before, "noid_agent_security_detections_total", { kind: "arp-spoof" })).toBe(0);
    // Out of the network: the host's own lab address, through the VM's gateway.
    await raw.exec(vmId, ["ip", "route", "replace", "default", "via", "10.202.0.1"]);
    await until(async () => (await raw.exec(vmId, pingArgv(lab.hosts[0]!.address, { count: 3, waitS: 1 }))).exitCode === 0, "the VM to reach outside its network");
    const mid = await scrape(server.address);
    expect(sampleValue(mid, "noid_agent_vm_traffic_packets_total", sel("egress", "sent"))).toBeGreaterThanOrEqual(3);
    expect(sampleValue(mid, "noid_agent_vm_traffic_bytes_total", sel("egress", "received"))).toBeGreaterThanOrEqual(3 * 84);
    expect(sampleValue(mid, "noid_agent_network_traffic_packets_total", { network: "n0", scope: "egress", direction: "sent" })).toBeGreaterThanOrEqual(3);
    const priv0 = sampleValue(mid, "noid_agent_vm_traffic_packets_total", sel("private", "sent")) ?? 0;
    await until(async () => (await raw.exec(vmId, pingArgv("10.202.0.1", { count: 3, waitS: 1 }))).exitCode === 0, "the VM to reach its gateway");
    const after = await scrape(server.address);
    expect(sampleValue(after, "noid_agent_vm_traffic_packets_total", sel("private", "sent"))).toBeGreaterThanOrEqual(priv0 + 3);
    expect(after.types.get("noid_agent_vm_traffic_bytes_total")).toBe("counter");
  });

  it("shows WireGuard peers and the age of their latest handshake", async () => {
    await applyMesh(false);
    const all = members();
    const ifname = hostMesh(all, "host-1", settings).wg.ifname;
    metrics.setWireguardReader(ifname, () => readWgDump(ifname, { runner: run, netns: h1(), mountNs: mountNs[0]! }));
    const none = await scrape(server.address);
    expect(sampleValue(none, "noid_agent_wireguard_peers", { interface: ifname })).toBe(1);
    // A handshake happens on the first packet through the tunnel.
    const peer = all[1]!;
    await until(async () => (await lab.exec("h1", pingArgv(peer.meshIp, { count: 1, waitS: 1 }), { allowFail: true })).exitCode === 0, "h1 to reach h2 over WireGuard");
    const m: Exposition = await until(async () => {
      const s = await scrape(server.address);
      return sampleValue(s, "noid_agent_wireguard_peer_handshake_age_seconds", { peer: peer.wgPublicKey }) !== undefined ? s : undefined;
    }, "a handshake age");
    const age = sampleValue(m, "noid_agent_wireguard_peer_handshake_age_seconds", { peer: peer.wgPublicKey })!;
    expect(age).toBeGreaterThanOrEqual(0);
    expect(age).toBeLessThan(600);
    expect(sampleValue(m, "noid_agent_wireguard_peer_transmit_bytes_total", { peer: peer.wgPublicKey })).toBeGreaterThan(0);
    // The private key never reaches the exposition.
    const text = await (await fetch(`http://${server.address}/metrics`)).text();
    expect(text).not.toContain(keys[0]!.privateKey);
  });

  it("splits each network's traffic into mesh (other hosts) and gateway paths", async () => {
    await applyMesh(true);
    for (const v of NET_VMS) {
      const ns = `${prefix}-${v.name}`;
      const h = lab.hosts[v.host]!.netns;
      await run(["ip", "netns", "add", ns]);
      await run(["ip", "-n", h, "link", "add", `${v.name}p`, "mtu", "1390", "type", "veth", "peer", "name", "eth0", "netns", ns]);
      await run(["ip", "-n", ns, "link", "set", "eth0", "address", v.mac, "mtu", "1390", "up"]);
      await run(["ip", "-n", ns, "addr", "add", `${v.ip}/24`, "dev", "eth0"]);
      await run(["ip", "-n", h, "link", "set", `${v.name}p`, "master", bridgeName(VNI), "up"]);
    }
    metrics.setSources({ networks: () => [{ networkId: "n1", vxlan: vxlanName(VNI), bridge: bridgeName(VNI) }] });
    const sel = (path: string, direction: string) => ({ network: "n1", path, direction });
    const before = await scrape(server.address);
    const meshOut0 = sampleValue(before, "noid_agent_network_bytes_total", sel("mesh", "out")) ?? 0;
    const gwOut0 = sampleValue(before, "noid_agent_network_packets_total", sel("gateway", "out")) ?? 0;
    const [x1, x2] = NET_VMS as [(typeof NET_VMS)[0], (typeof NET_VMS)[0]];
    await until(async () => (await run(pingArgv(x2.ip, { count: 2, waitS: 1 }), { netns: `${prefix}-${x1.name}`, allowFail: true })).exitCode === 0, "x1 to reach x2 across the mesh");
    await until(async () => (await run(pingArgv("10.203.0.1", { count: 2, waitS: 1 }), { netns: `${prefix}-${x1.name}`, allowFail: true })).exitCode === 0, "x1 to reach its gateway");
    const after = await scrape(server.address);
    expect(sampleValue(after, "noid_agent_network_bytes_total", sel("mesh", "out"))).toBeGreaterThan(meshOut0 + 2 * 84);
    expect(sampleValue(after, "noid_agent_network_bytes_total", sel("mesh", "in"))).toBeGreaterThan(0);
    expect(sampleValue(after, "noid_agent_network_packets_total", sel("gateway", "out"))).toBeGreaterThanOrEqual(gwOut0 + 2);
    expect(sampleValue(after, "noid_agent_network_packets_total", sel("gateway", "in"))).toBeGreaterThanOrEqual(2);
  });

  it("every Grafana panel's query selects series present in real scrapes of a coordinator and this agent", async () => {
    // No Prometheus here: each query's series selectors are checked against the exposition itself.
    const c = await startTestCoordinator({ server: { metrics_listen: "127.0.0.1:0" } });
    const sim = new SimAgent({ address: c.address, token: c.adminToken, name: "hv-g", autoRun: true });
    try {
      await sim.connect();
      const admin = c.client();
      await admin.createVm("g1", { vcpus: 1, memoryMb: 128 });
      await eventually(async () => (await admin.getVm("g1")).status?.phase === VmPhase.VM_PHASE_RUNNING);
      await expect(c.client("0".repeat(64), { retries: 0 }).listVms()).rejects.toBeInstanceOf(NoidApiError);
      await eventually(async () => (await admin.listEvents({ kind: "auth.failure" })).length > 0);
      const coord = await scrape(c.handle.metricsServer!.address);
      const agent = await scrape(server.address);
      const both: Exposition = { samples: [...coord.samples, ...agent.samples], types: new Map([...coord.types, ...agent.types]) };

      const file = fileURLToPath(new URL("../../deploy/grafana/noid.json", import.meta.url));
      const dash = JSON.parse(readFileSync(file, "utf8")) as { panels: Array<{ type: string; title: string; targets?: Array<{ expr: string }> }> };
      const panels = dash.panels.filter((p) => p.type !== "row");
      expect(panels.length).toBeGreaterThanOrEqual(20);
      const missing: string[] = [];
      for (const p of panels) {
        expect(p.targets?.length, p.title).toBeGreaterThan(0);
        for (const t of p.targets!) {
          const sel = selectors(t.expr);
          expect(sel.length, `${p.title}: ${t.expr}`).toBeGreaterThan(0);
          for (const s of sel) if (!selects(both, s)) missing.push(`${p.title}: ${s.name}${JSON.stringify(s.matchers)}`);
        }
      }
      expect(missing).toEqual([]);
    } finally {
      sim.close();
      await c.stop();
    }
  });
});
