import { describe, expect, it } from "vitest";
import {
  MONITOR_TABLE,
  type MonitorReading,
  type MonitorSpec,
  monitorDrift,
  monitorReadings,
  monitorSpecOf,
  netCounter,
  renderMonitor,
  vmCounter,
  vmObj,
} from "../../agent/network/monitor-rules.js";
import { BehaviourDetector, DEFAULT_THRESHOLDS, portRanges, widestTarget } from "../../agent/network/monitor-detect.js";
import { LISTEN_LABEL, declaredListen } from "../../common/listen-label.js";
import { parseAgentConfig } from "../../agent/config.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import type { VmAttachment } from "../../agent/network/view.js";
import { AgentMetrics } from "../../agent/metrics.js";
import { parseExposition, sampleValue } from "../helpers/exposition.js";

const spec: MonitorSpec = {
  windowSeconds: 60,
  setSize: 4096,
  vms: [
    { vmId: "vm-a1", port: "a1p", mac: "02:00:00:0a:00:01", ip: "10.20.0.11", networkId: "net1", vni: 101, cidr: "10.20.0.0/24", listen: [80, 22] },
    { vmId: "vm-b2", port: "b2p", mac: "02:00:00:0a:00:02", ip: "10.20.0.12", networkId: "net1", vni: 101, cidr: "10.20.0.7/24", listen: "any" },
  ],
};

// What `nft -j list table bridge noid_monitor` returns for a rendered table (the shape of
// nftables 1.0.6; rule expressions left out, the drift check reads comments and names).
function listed(s: MonitorSpec, opts: { dropRule?: string; extra?: Record<string, unknown>[]; counters?: Record<string, number> } = {}): string {
  const text = renderMonitor(s);
  const objs: Record<string, unknown>[] = [{ metainfo: { version: "1.0.6", json_schema_version: 1 } }, { table: { family: "bridge", name: MONITOR_TABLE, handle: 2 } }];
  for (const m of text.matchAll(/^ {2}counter (\S+) \{/gm)) objs.push({ counter: { family: "bridge", name: m[1], table: MONITOR_TABLE, packets: opts.counters?.[m[1]!] ?? 0, bytes: (opts.counters?.[m[1]!] ?? 0) * 100 } });
  for (const m of text.matchAll(/^ {2}set (\S+) \{/gm)) objs.push({ set: { family: "bridge", name: m[1], table: MONITOR_TABLE, flags: ["timeout"], timeout: 60 } });
  let chain = "";
  for (const line of text.split("\n")) {
    const c = /^ {2}chain (\S+) \{/.exec(line);
    if (c) {
      chain = c[1]!;
      const base = chain === "sent" ? { type: "filter", hook: "prerouting", prio: -300, policy: "accept" } : chain === "received" ? { type: "filter", hook: "postrouting", prio: 300, policy: "accept" } : {};
      objs.push({ chain: { family: "bridge", table: MONITOR_TABLE, name: chain, ...base } });
      continue;
    }
    const r = /^ {4}(?!type ).* comment "(.*)"$/.exec(line);
    if (r && `${chain}/${r[1]}` !== opts.dropRule) objs.push({ rule: { family: "bridge", table: MONITOR_TABLE, chain, comment: r[1], expr: [] } });
  }
  return JSON.stringify({ nftables: [...objs, ...(opts.extra ?? [])] });
}

describe("monitor ruleset", () => {
  const text = renderMonitor(spec, new Map([[vmCounter("vm-a1", "egress", "tx"), { packets: 3, bytes: 300 }]]));

  it("replaces only its own table, watching before the guards and after everything else", () => {
    expect(text.split("\n").slice(0, 3)).toEqual([`table bridge ${MONITOR_TABLE}`, `delete table bridge ${MONITOR_TABLE}`, `table bridge ${MONITOR_TABLE} {`]);
    expect(text).toContain("type filter hook prerouting priority -300; policy accept;");
    expect(text).toContain("type filter hook postrouting priority 300; policy accept;");
    expect(text).toContain(`iifname "a1p" jump from_vm_a1 comment "vm-a1"`);
    expect(text).toContain(`oifname "b2p" jump to_vm_b2 comment "vm-b2"`);
    // It never decides: no drop or accept anywhere (the guards do that).
    expect(text).not.toMatch(/\b(drop|accept|reject)\b(?!;)/);
  });

  it("carries counter values over a replacement and has one set of network counters per VNI", () => {
    expect(text).toContain("counter txe_vm_a1 { packets 3 bytes 300 }");
    expect(text.match(new RegExp(`counter ${netCounter(101, "private", "tx")} `, "g"))).toHaveLength(1);
  });

  it("splits private and egress by the network's CIDR (normalised), broadcast and multicast staying private", () => {
    expect(text).toContain(
      `ether type ip ip daddr != { 10.20.0.0/24, 224.0.0.0/4, 255.255.255.255 } counter name "txe_vm_b2" counter name "ntxe_101" return comment "tx-egress"`,
    );
    expect(text).toContain(`counter name "txp_vm_b2" counter name "ntxp_101" comment "tx-private"`);
    expect(text).toContain(`ether type ip ip saddr != { 10.20.0.0/24, 224.0.0.0/4, 255.255.255.255 } counter name "rxe_vm_a1" counter name "nrxe_101" return comment "rx-egress"`);
  });

  it("records forged ARP senders (other IP, or own IP with another MAC; probes from 0.0.0.0 allowed)", () => {
    expect(text).toContain(`ether type arp arp saddr ip != { 0.0.0.0, 10.20.0.11 } update @arpsrc_vm_a1 { arp saddr ip . arp saddr ether } counter name "arp_vm_a1"`);
    expect(text).toContain(`ether type arp arp saddr ip { 0.0.0.0, 10.20.0.11 } arp saddr ether != 02:00:00:0a:00:01 update @arpsrc_vm_a1`);
  });

  it("counts DHCP replies (BOOTREPLY) and records their clients", () => {
    expect(text).toContain(`ether type ip udp sport 67 udp dport 68 @th,64,8 2 update @dhcpto_vm_a1 { ether daddr } counter name "dhcp_vm_a1"`);
  });

  it("keeps scan targets in sets that expire after the window", () => {
    expect(text).toContain("set dst_vm_a1 { type ipv4_addr . inet_service; flags dynamic,timeout; timeout 60s; size 4096; }");
    expect(text).toContain("set hosts_vm_a1 { type ipv4_addr; flags dynamic,timeout; timeout 60s; size 4096; }");
    expect(text).toContain(`tcp flags & (syn | ack) == syn update @dst_vm_a1 { ip daddr . tcp dport } update @hosts_vm_a1 { ip daddr }`);
    expect(text).toContain(`icmp type echo-request update @hosts_vm_a1 { ip daddr }`);
  });

  it("watches SYN-ACKs from undeclared ports; 'any' switches it off for a VM", () => {
    expect(text).toContain(`tcp flags & (syn | ack) == syn | ack tcp sport != { 22, 80 } update @lsnpeer_vm_a1 { tcp sport . ip daddr } counter name "lsn_vm_a1"`);
    const b2 = text.slice(text.indexOf("chain from_vm_b2"));
    expect(b2.slice(0, b2.indexOf("  }"))).not.toContain("listener");
    const none = renderMonitor({ ...spec, vms: [{ ...spec.vms[0]!, listen: [] }] });
    expect(none).toContain(`tcp flags & (syn | ack) == syn | ack update @lsnpeer_vm_a1`);
  });

  it("refuses names and values that could break out of the ruleset", () => {
    const bad = (v: Partial<MonitorSpec["vms"][0]>) => () => renderMonitor({ ...spec, vms: [{ ...spec.vms[0]!, ...v }] });
    expect(bad({ port: 'x" accept #' })).toThrow(/port/);
    expect(bad({ mac: "02:00:00:0A:00:01" })).toThrow(/mac/);
    expect(bad({ ip: "10.20.0.1; drop" })).toThrow(/ip/);
    expect(bad({ cidr: "10.20.0.0" })).toThrow(/cidr/);
    expect(bad({ listen: [0] })).toThrow(/listen/);
    expect(() => renderMonitor({ ...spec, vms: [spec.vms[0]!, { ...spec.vms[0]!, vmId: "vm_a1" }] })).toThrow(/two VMs/);
    expect(() => renderMonitor({ ...spec, windowSeconds: 0 })).toThrow(/windowSeconds/);
  });

  it("detects drift: none when as rendered; missing table, rule, object, or another spec", () => {
    expect(monitorDrift(spec, listed(spec))).toEqual([]);
    expect(monitorDrift(spec, undefined)).toEqual([`table bridge ${MONITOR_TABLE} missing`]);
    expect(monitorDrift(spec, listed(spec, { dropRule: "from_vm_a1/arp-ip" })).join()).toMatch(/chain from_vm_a1: rules/);
    expect(monitorDrift(spec, listed(spec, { dropRule: "sent/vm-b2" })).join()).toMatch(/chain sent: rules/);
    const other: MonitorSpec = { ...spec, vms: [{ ...spec.vms[0]!, listen: [22] }, spec.vms[1]!] };
    expect(monitorDrift(other, listed(spec))).toEqual(["table built from another spec"]);
    expect(monitorDrift({ ...spec, windowSeconds: 30 }, listed(spec))).toEqual(["table built from another spec"]);
  });

  it("reads counters and set elements (plain and with timeouts) per VM and per network", () => {
    const elem = (val: unknown) => ({ elem: { val, timeout: 60, expires: 42 } });
    const json = listed(spec, {
      counters: { arp_vm_a1: 4, txp_vm_a1: 10, txe_vm_a1: 2, rxe_vm_a1: 1, ntxp_101: 12, nrxe_101: 1 },
      extra: [
        { set: { family: "bridge", name: vmObj("arpsrc", "vm-a1"), table: MONITOR_TABLE, elem: [elem({ concat: ["10.20.0.99", "02:00:00:0a:00:01"] })] } },
        { set: { family: "bridge", name: vmObj("dst", "vm-a1"), table: MONITOR_TABLE, elem: [{ concat: ["10.20.0.12", 22] }, elem({ concat: ["10.20.0.12", 23] })] } },
        { set: { family: "bridge", name: vmObj("hosts", "vm-a1"), table: MONITOR_TABLE, elem: ["10.20.0.12"] } },
        { set: { family: "bridge", name: vmObj("lsnpeer", "vm-a1"), table: MONITOR_TABLE, elem: [elem({ concat: [8080, "10.20.0.12"] })] } },
      ],
    });
    const { vms, networks } = monitorReadings(spec, json);
    const a1 = vms.find((v) => v.vmId === "vm-a1")!;
    expect(a1.arpForged).toBe(4);
    expect(a1.arpSenders).toEqual([{ ip: "10.20.0.99", mac: "02:00:00:0a:00:01" }]);
    expect(a1.targets).toEqual([{ ip: "10.20.0.12", port: 22 }, { ip: "10.20.0.12", port: 23 }]);
    expect(a1.hosts).toEqual(["10.20.0.12"]);
    expect(a1.listeners).toEqual([{ port: 8080, peer: "10.20.0.12" }]);
    expect(a1.traffic.tx_private).toEqual({ packets: 10, bytes: 1000 });
    expect(a1.traffic.rx_egress).toEqual({ packets: 1, bytes: 100 });
    expect(networks).toContainEqual({ networkId: "net1", scope: "private", direction: "sent", packets: 12, bytes: 1200 });
    expect(networks).toContainEqual({ networkId: "net1", scope: "egress", direction: "received", packets: 1, bytes: 100 });
    expect(networks).toHaveLength(4);
  });

  it("covers the local VMs whose port exists, with their network and declaration", () => {
    const att = (vmId: string, ip: string): VmAttachment => ({ vmId, networkId: "net1", vni: 101, bridge: "vmnet101", mtu: 1390, gateway: "10.20.0.1", prefixLen: 24, mac: "02:00:00:0a:00:01", ip });
    const view = { local: new Map([["b", att("b", "10.20.0.3")], ["a", att("a", "10.20.0.2")], ["c", att("c", "10.20.0.4")]]), networks: new Map([["net1", { cidr: "10.20.0.0/24", gateway: "10.20.0.1", vni: 101 }]]) };
    const s = monitorSpecOf(view, new Map([["a", "ap"], ["b", "bp"]]), (id) => (id === "a" ? [22] : "any"), { windowSeconds: 60, setSize: 4096 });
    expect(s.vms.map((v) => [v.vmId, v.port, v.cidr, v.listen])).toEqual([["a", "ap", "10.20.0.0/24", [22]], ["b", "bp", "10.20.0.0/24", "any"]]);
  });
});

describe("declared listening ports (label noid.dev/listen)", () => {
  it("parses ports joined by _ or ., 'any', and absence", () => {
    expect(declaredListen(undefined)).toEqual([]);
    expect(declaredListen({ [LISTEN_LABEL]: "443_22_80_22" })).toEqual([22, 80, 443]);
    expect(declaredListen({ [LISTEN_LABEL]: "8080.9090" })).toEqual([8080, 9090]);
    expect(declaredListen({ [LISTEN_LABEL]: "any" })).toBe("any");
    for (const bad of ["0", "70000", "http", "22__80"]) expect(() => declaredListen({ [LISTEN_LABEL]: bad }), bad).toThrow(/noid\.dev\/listen/);
  });

  it("is checked when a VM is created", () => {
    expect(() => normalizeVmSpec({ vcpus: 1, memoryMb: 128, diskGb: 1, driver: "", image: "", labels: { [LISTEN_LABEL]: "ssh" }, hostSelector: {}, host: "", antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined })).toThrow(/listen/);
    expect(normalizeVmSpec({ vcpus: 1, memoryMb: 128, diskGb: 1, driver: "", image: "", labels: { [LISTEN_LABEL]: "22_80" }, hostSelector: {}, host: "", antiAffinityGroup: "", network: "", networkGroup: "", sshAuthorizedKeys: [], hostLoss: undefined }).labels).toEqual({ [LISTEN_LABEL]: "22_80" });
  });
});

const reading = (over: Partial<MonitorReading> = {}): MonitorReading => ({
  vmId: "vm-a1",
  networkId: "net1",
  arpForged: 0,
  dhcpReplies: 0,
  listenerAccepts: 0,
  arpSenders: [],
  dhcpClients: [],
  targets: [],
  hosts: [],
  listeners: [],
  traffic: { tx_private: { packets: 0, bytes: 0 }, tx_egress: { packets: 0, bytes: 0 }, rx_private: { packets: 0, bytes: 0 }, rx_egress: { packets: 0, bytes: 0 } },
  ...over,
});

describe("behaviour detector", () => {
  const t = { scanPorts: 5, scanHosts: 4, eventIntervalMs: 10_000 };

  it("takes the first reading as the baseline, then reports increases with evidence", () => {
    const d = new BehaviourDetector(t);
    expect(d.observe([reading({ arpForged: 7 })], 0)).toEqual([]);
    const ev = d.observe([reading({ arpForged: 9, arpSenders: [{ ip: "10.20.0.99", mac: "02:00:00:0a:00:01" }] })], 2000);
    expect(ev).toEqual([{ vmId: "vm-a1", kind: "arp-spoof", count: 2, detail: expect.stringContaining("10.20.0.99 at 02:00:00:0a:00:01") }]);
  });

  it("counts a VM that appears after the baseline from zero, and a recreated counter from its new value", () => {
    const d = new BehaviourDetector(t);
    d.observe([], 0);
    expect(d.observe([reading({ dhcpReplies: 3, dhcpClients: ["ff:ff:ff:ff:ff:ff"] })], 1)).toMatchObject([{ kind: "rogue-dhcp", count: 3, detail: expect.stringContaining("ff:ff:ff:ff:ff:ff") }]);
    expect(d.observe([reading({ dhcpReplies: 1 })], 20_000)).toMatchObject([{ kind: "rogue-dhcp", count: 1 }]);
  });

  it("sends at most one event per VM and kind per interval, aggregating what came between", () => {
    const d = new BehaviourDetector(t);
    d.observe([reading()], 0);
    expect(d.observe([reading({ listenerAccepts: 1, listeners: [{ port: 8080, peer: "10.20.0.12" }] })], 1000)).toMatchObject([
      { kind: "undeclared-listener", count: 1, detail: expect.stringMatching(/port\(s\) 8080; peers: 10\.20\.0\.12/) },
    ]);
    expect(d.observe([reading({ listenerAccepts: 4 })], 5000)).toEqual([]);
    expect(d.observe([reading({ listenerAccepts: 6 })], 10_999)).toEqual([]);
    expect(d.observe([reading({ listenerAccepts: 6 })], 11_000)).toMatchObject([{ kind: "undeclared-listener", count: 5 }]);
    expect(d.observe([reading({ listenerAccepts: 6 })], 30_000)).toEqual([]);
  });

  it("reports a port scan when one address's distinct ports reach the threshold, again only while it grows", () => {
    const d = new BehaviourDetector(t);
    const ports = (n: number, ip = "10.20.0.12") => Array.from({ length: n }, (_, i) => ({ ip, port: 20 + i }));
    // Many ports spread over addresses are not a port scan of any one of them.
    expect(d.observe([reading({ targets: [...ports(4), ...ports(4, "10.20.0.13")] })], 0)).toEqual([]);
    const first = d.observe([reading({ targets: ports(5) })], 1000);
    expect(first).toEqual([{ vmId: "vm-a1", kind: "port-scan", count: 5, detail: "5 distinct ports of 10.20.0.12 tried in the window (threshold 5): 20-24" }]);
    expect(d.observe([reading({ targets: ports(9) })], 5000)).toEqual([]); // within the interval
    expect(d.observe([reading({ targets: ports(9) })], 12_000)).toMatchObject([{ kind: "port-scan", count: 9 }]);
    expect(d.observe([reading({ targets: ports(9) })], 30_000)).toEqual([]); // lingering, not growing
    expect(d.observe([reading({ targets: ports(2) })], 70_000)).toEqual([]); // expired
    expect(d.observe([reading({ targets: ports(6) })], 71_000)).toMatchObject([{ kind: "port-scan", count: 6 }]); // a new scan
  });

  it("reports an address scan from the distinct addresses of the window", () => {
    const d = new BehaviourDetector(t);
    const hosts = ["10.20.0.9", "10.20.0.10", "10.20.0.2", "10.20.0.30"];
    expect(d.observe([reading({ hosts: hosts.slice(0, 3) })], 0)).toEqual([]);
    expect(d.observe([reading({ hosts })], 1)).toEqual([
      { vmId: "vm-a1", kind: "host-scan", count: 4, detail: "4 distinct addresses tried in the window (threshold 4): 10.20.0.2, 10.20.0.9, 10.20.0.10, 10.20.0.30" },
    ]);
  });

  it("keeps VMs apart and forgets VMs that are gone", () => {
    const d = new BehaviourDetector(t);
    d.observe([reading(), reading({ vmId: "vm-b2" })], 0);
    expect(d.observe([reading({ arpForged: 1 }), reading({ vmId: "vm-b2", arpForged: 2 })], 1).map((e) => [e.vmId, e.count])).toEqual([["vm-a1", 1], ["vm-b2", 2]]);
    d.observe([reading()], 2);
    expect(d.observe([reading(), reading({ vmId: "vm-b2", arpForged: 2 })], 20_000).map((e) => [e.vmId, e.count])).toEqual([["vm-b2", 2]]);
  });

  it("has sane defaults and refuses nonsense thresholds", () => {
    expect(DEFAULT_THRESHOLDS).toEqual({ scanPorts: 64, scanHosts: 32, eventIntervalMs: 10_000 });
    expect(() => new BehaviourDetector({ ...t, scanPorts: 1 })).toThrow(/thresholds/);
  });

  it("summarises evidence: the widest target and port ranges", () => {
    expect(widestTarget([{ ip: "10.0.0.2", port: 1 }, { ip: "10.0.0.3", port: 1 }, { ip: "10.0.0.3", port: 2 }])).toEqual({ ip: "10.0.0.3", ports: [1, 2] });
    expect(widestTarget([])).toBeUndefined();
    expect(portRanges([22, 23, 24, 80, 443, 444])).toBe("22-24, 80, 443-444");
    expect(portRanges([1, 3, 5, 7], 2)).toBe("1, 3, ...");
  });
});

describe("agent.toml [monitor]", () => {
  const base = { coordinator: "c:7654", insecure: true };
  it("has defaults and takes thresholds", () => {
    expect(parseAgentConfig(base).monitor).toEqual({ enabled: true, windowSeconds: 60, setSize: 16_384, thresholds: DEFAULT_THRESHOLDS });
    const m = parseAgentConfig({ ...base, monitor: { window_seconds: 30, scan_ports: 20, scan_hosts: 10, event_interval_seconds: 5 } }).monitor;
    expect(m).toMatchObject({ windowSeconds: 30, thresholds: { scanPorts: 20, scanHosts: 10, eventIntervalMs: 5000 } });
    expect(parseAgentConfig({ ...base, monitor: { enabled: false } }).monitor.enabled).toBe(false);
  });
  it("names the field of a bad value", () => {
    expect(() => parseAgentConfig({ ...base, monitor: { scan_ports: 1 } })).toThrow(/monitor\.scan_ports/);
    expect(() => parseAgentConfig({ ...base, monitor: { sacn_ports: 10 } })).toThrow(/monitor/);
    expect(() => parseAgentConfig({ ...base, monitor: { scan_hosts: 5000, set_size: 1000 } })).toThrow(/set_size/);
  });
});

describe("monitor metrics", () => {
  it("exposes per-VM and per-network traffic by scope and direction, and detections by kind (all kinds from 0)", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    const r = reading({ traffic: { tx_private: { packets: 5, bytes: 500 }, tx_egress: { packets: 2, bytes: 200 }, rx_private: { packets: 4, bytes: 400 }, rx_egress: { packets: 1, bytes: 100 } } });
    m.setMonitorReader(async () => ({ vms: [r], networks: [{ networkId: "net1", scope: "egress", direction: "sent", packets: 9, bytes: 900 }] }));
    m.detected("arp-spoof");
    const e = parseExposition(await m.registry.metrics());
    expect(sampleValue(e, "noid_agent_vm_traffic_bytes_total", { vm: "vm-a1", network: "net1", scope: "private", direction: "sent" })).toBe(500);
    expect(sampleValue(e, "noid_agent_vm_traffic_packets_total", { vm: "vm-a1", network: "net1", scope: "egress", direction: "received" })).toBe(1);
    expect(sampleValue(e, "noid_agent_network_traffic_bytes_total", { network: "net1", scope: "egress", direction: "sent" })).toBe(900);
    expect(sampleValue(e, "noid_agent_security_detections_total", { kind: "arp-spoof" })).toBe(1);
    expect(sampleValue(e, "noid_agent_security_detections_total", { kind: "port-scan" })).toBe(0);
    expect(e.types.get("noid_agent_vm_traffic_bytes_total")).toBe("counter");
  });

  it("counts a failing monitor read instead of failing the scrape", async () => {
    const m = new AgentMetrics({ defaultMetrics: false });
    m.setMonitorReader(() => Promise.reject(new Error("nft: no such table")));
    await m.registry.metrics();
    const e = parseExposition(await m.registry.metrics());
    expect(sampleValue(e, "noid_agent_metrics_read_errors_total", { source: "monitor" })).toBeGreaterThanOrEqual(1);
    expect(sampleValue(e, "noid_agent_vm_traffic_bytes_total")).toBeUndefined();
  });
});
