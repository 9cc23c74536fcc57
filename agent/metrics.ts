// The agent's metrics: one prom-client Registry per process (never the global
// default), served at /metrics when --metrics-listen is given. Counters fed by
// hooks (reconcile passes, driver calls) count as things happen; what lives in
// the kernel (per-VM port counters, WireGuard peers, guard drops) is read at
// scrape time, in the agent's host netns, by small readers around pure parsers.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";
import type { VmStatusReport } from "../gen/noid/v1/agent.js";
import { VmPhase } from "../gen/noid/v1/vm.js";
import type { Runner } from "../common/run.js";
import type { GuardCounter } from "../mesh/guards.js";
import type { WgObserved } from "../mesh/wireguard.js";
import type { ExecOptions, HypervisorDriver, VmCreateSpec } from "./drivers/driver.js";
import type { PassResult } from "./reconcile/loop.js";
import type { MonitorReading, NetworkTrafficReading } from "./network/monitor-rules.js";
import { DETECTION_KINDS } from "./network/monitor-detect.js";

/** What the monitor table holds at one scrape (the mesh controller's monitorReadings()). */
export interface MonitorScrape {
  vms: MonitorReading[];
  networks: NetworkTrafficReading[];
}

export interface PortStats {
  rxBytes: number;
  rxPackets: number;
  txBytes: number;
  txPackets: number;
}

/** Pure: `ip -s -j link show` output -> counters by interface name. */
export function parseLinkStats(json: string): Map<string, PortStats> {
  const out = new Map<string, PortStats>();
  const links = JSON.parse(json) as Array<{ ifname?: string; stats64?: { rx?: { bytes?: number; packets?: number }; tx?: { bytes?: number; packets?: number } } }>;
  for (const l of links) {
    if (!l.ifname || !l.stats64) continue;
    out.set(l.ifname, {
      rxBytes: l.stats64.rx?.bytes ?? 0,
      rxPackets: l.stats64.rx?.packets ?? 0,
      txBytes: l.stats64.tx?.bytes ?? 0,
      txPackets: l.stats64.tx?.packets ?? 0,
    });
  }
  return out;
}

export interface VmTraffic {
  vm: string;
  /** From the VM's point of view: what it sent is what its host-side port received. */
  sentBytes: number;
  sentPackets: number;
  receivedBytes: number;
  receivedPackets: number;
}

/** Pure: per-VM traffic from the host-side port counters (ports not found are skipped). */
export function vmTraffic(vms: readonly { id: string; hostPort: string }[], stats: Map<string, PortStats>): VmTraffic[] {
  return vms.flatMap((v) => {
    const s = stats.get(v.hostPort);
    return s ? [{ vm: v.id, sentBytes: s.rxBytes, sentPackets: s.rxPackets, receivedBytes: s.txBytes, receivedPackets: s.txPackets }] : [];
  });
}

/** Pure: seconds since each peer's latest handshake (undefined: never). */
export function handshakeAges(wg: WgObserved, nowSeconds: number): { peer: string; endpoint: string; ageSeconds?: number; rxBytes: number; txBytes: number }[] {
  return wg.peers.map((p) => ({
    peer: p.publicKey,
    endpoint: p.endpoint ?? "",
    ...(p.latestHandshake > 0 ? { ageSeconds: Math.max(0, nowSeconds - p.latestHandshake) } : {}),
    rxBytes: p.rxBytes,
    txBytes: p.txBytes,
  }));
}

export interface NetworkTraffic {
  network: string;
  /** "mesh": to/from VMs of the network on other hosts (its VXLAN device); "gateway": to/from the host's stack (egress and host-local, the bridge's own interface). */
  path: "mesh" | "gateway";
  direction: "out" | "in";
  bytes: number;
  packets: number;
}

/**
 * Pure: per-network traffic split by path, from the network's VXLAN device
 * (tx = out to other hosts) and the bridge's own interface (rx = from VMs to
 * the gateway, i.e. out of the network). Device names: mesh/names.ts.
 */
export function networkTraffic(nets: readonly { networkId: string; vxlan: string; bridge: string }[], stats: Map<string, PortStats>): NetworkTraffic[] {
  return nets.flatMap((n) => {
    const out: NetworkTraffic[] = [];
    const vx = stats.get(n.vxlan);
    if (vx) {
      out.push({ network: n.networkId, path: "mesh", direction: "out", bytes: vx.txBytes, packets: vx.txPackets });
      out.push({ network: n.networkId, path: "mesh", direction: "in", bytes: vx.rxBytes, packets: vx.rxPackets });
    }
    const br = stats.get(n.bridge);
    if (br) {
      out.push({ network: n.networkId, path: "gateway", direction: "out", bytes: br.rxBytes, packets: br.rxPackets });
      out.push({ network: n.networkId, path: "gateway", direction: "in", bytes: br.txBytes, packets: br.txPackets });
    }
    return out;
  });
}

export function phaseLabel(p: VmPhase): string {
  return String(VmPhase[p] ?? "VM_PHASE_UNKNOWN").replace(/^VM_PHASE_/, "").toLowerCase();
}

/** Reads every link's counters in `netns` (the agent's own when undefined). */
export async function readLinkStats(runner: Runner, netns?: string): Promise<Map<string, PortStats>> {
  const r = await runner(["ip", "-s", "-j", "link", "show"], netns !== undefined ? { netns } : {});
  return parseLinkStats(r.stdout);
}

const LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export interface AgentMetricSources {
  /** The last status reported per VM (ReconcileLoop.lastReports). */
  reports?: () => VmStatusReport[];
  /** VMs and their host-side ports (the un-instrumented driver's list()). */
  vmPorts?: () => Promise<{ id: string; hostPort: string }[]>;
  /** Link counters of the netns the host ports live in. */
  linkStats?: () => Promise<Map<string, PortStats>>;
  /** The tenant networks on this host and their devices (the mesh controller knows them). */
  networks?: () => { networkId: string; vxlan: string; bridge: string }[];
}

export class AgentMetrics {
  readonly registry = new Registry();
  private sources: AgentMetricSources = {};
  private wireguard?: { ifname: string; read: () => Promise<WgObserved | undefined> };
  private guards?: () => Promise<GuardCounter[]>;
  private monitor?: () => Promise<MonitorScrape>;
  private readonly detections: Counter<"kind">;
  private readonly passes: Counter<"result">;
  private readonly passDuration: Histogram;
  private readonly actionErrors: Counter<"action">;
  private readonly driverOps: Counter<"driver" | "op" | "result">;
  private readonly driverLatency: Histogram<"driver" | "op">;
  private readonly scrapeErrors: Counter<"source">;

  constructor(opts: { defaultMetrics?: boolean; now?: () => number } = {}) {
    const registers = [this.registry];
    const now = opts.now ?? Date.now;
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: "noid_agent_" });
    const self = this;
    this.passes = new Counter({ name: "noid_agent_reconcile_runs_total", help: "Reconcile passes, by result (converged, unconverged, error)", labelNames: ["result"], registers });
    this.passDuration = new Histogram({ name: "noid_agent_reconcile_duration_seconds", help: "Reconcile pass duration", buckets: LATENCY_BUCKETS, registers });
    this.actionErrors = new Counter({ name: "noid_agent_reconcile_errors_total", help: "Reconcile actions that failed, by action", labelNames: ["action"], registers });
    this.driverOps = new Counter({ name: "noid_agent_driver_operations_total", help: "Hypervisor driver calls, by driver, operation and result", labelNames: ["driver", "op", "result"], registers });
    this.driverLatency = new Histogram({ name: "noid_agent_driver_operation_duration_seconds", help: "Hypervisor driver call latency", labelNames: ["driver", "op"], buckets: LATENCY_BUCKETS, registers });
    this.scrapeErrors = new Counter({ name: "noid_agent_metrics_read_errors_total", help: "Scrape-time reads that failed (links, wireguard, guards, monitor)", labelNames: ["source"], registers });
    // Error series exist from the start (at 0), so rate() and dashboards see them before the first error.
    for (const source of ["links", "wireguard", "guards", "monitor"]) this.scrapeErrors.inc({ source }, 0);
    this.detections = new Counter({
      name: "noid_agent_security_detections_total",
      help: "Suspicious network behaviour detected on this host's VMs (events raised), by kind: arp-spoof, rogue-dhcp, port-scan, host-scan, undeclared-listener",
      labelNames: ["kind"],
      registers,
    });
    for (const kind of DETECTION_KINDS) this.detections.inc({ kind }, 0);
    for (const action of ["create", "start", "stop", "destroy", "report"]) this.actionErrors.inc({ action }, 0);

    new Gauge({
      name: "noid_agent_vms",
      help: "VMs on this host by the phase last reported",
      labelNames: ["phase"],
      registers,
      collect() {
        const reports = self.sources.reports?.();
        if (!reports) return;
        const counts = new Map<string, number>(["creating", "running", "stopping", "stopped", "failed"].map((p) => [p, 0]));
        for (const r of reports) if (!r.destroyed) counts.set(phaseLabel(r.phase), (counts.get(phaseLabel(r.phase)) ?? 0) + 1);
        this.reset();
        for (const [phase, n] of counts) this.set({ phase }, n);
      },
    });

    const traffic = (name: string, help: string, pick: (t: VmTraffic) => number) =>
      new Counter({
        name,
        help,
        labelNames: ["vm"],
        registers,
        async collect() {
          const t = await self.traffic();
          this.reset();
          for (const v of t.vms) this.inc({ vm: v.vm }, pick(v));
        },
      });
    traffic("noid_agent_vm_sent_bytes_total", "Bytes a VM sent (its host-side port's rx)", (t) => t.sentBytes);
    traffic("noid_agent_vm_sent_packets_total", "Packets a VM sent", (t) => t.sentPackets);
    traffic("noid_agent_vm_received_bytes_total", "Bytes delivered to a VM (its host-side port's tx)", (t) => t.receivedBytes);
    traffic("noid_agent_vm_received_packets_total", "Packets delivered to a VM", (t) => t.receivedPackets);

    for (const unit of ["bytes", "packets"] as const) {
      new Counter({
        name: `noid_agent_network_${unit}_total`,
        help: `${unit === "bytes" ? "Bytes" : "Packets"} of each tenant network on this host, by path (mesh: other hosts, via its VXLAN device; gateway: the host's stack, i.e. egress and host-local) and direction (out of / into the network)`,
        labelNames: ["network", "path", "direction"],
        registers,
        async collect() {
          const t = await self.traffic();
          this.reset();
          for (const n of t.networks) this.inc({ network: n.network, path: n.path, direction: n.direction }, unit === "bytes" ? n.bytes : n.packets);
        },
      });
    }
    // Private (inside the tenant network: its CIDR, broadcast, multicast) vs egress (anything
    // else, i.e. through the gateway to outside), from the monitor table's nft counters.
    for (const unit of ["bytes", "packets"] as const) {
      new Counter({
        name: `noid_agent_vm_traffic_${unit}_total`,
        help: `${unit === "bytes" ? "Bytes" : "Packets"} each VM sent and received, by scope: private (peers of its tenant network, on any host) or egress (outside the network)`,
        labelNames: ["vm", "network", "scope", "direction"],
        registers,
        async collect() {
          const m = await self.readMonitor();
          this.reset();
          for (const v of m.vms) {
            for (const [key, t] of Object.entries(v.traffic)) {
              const [dir, scope] = key.split("_") as ["tx" | "rx", string];
              this.inc({ vm: v.vmId, network: v.networkId, scope, direction: dir === "tx" ? "sent" : "received" }, t[unit]);
            }
          }
        },
      });
      new Counter({
        name: `noid_agent_network_traffic_${unit}_total`,
        help: `${unit === "bytes" ? "Bytes" : "Packets"} the VMs of each tenant network on this host sent and received, by scope (private or egress); kept across VM churn`,
        labelNames: ["network", "scope", "direction"],
        registers,
        async collect() {
          const m = await self.readMonitor();
          this.reset();
          for (const n of m.networks) this.inc({ network: n.networkId, scope: n.scope, direction: n.direction }, n[unit]);
        },
      });
    }
    new Gauge({
      name: "noid_agent_wireguard_peers",
      help: "WireGuard peers configured on the mesh interface",
      labelNames: ["interface"],
      registers,
      async collect() {
        const wg = await self.readWg();
        this.reset();
        if (wg && self.wireguard) this.set({ interface: self.wireguard.ifname }, wg.peers.length);
      },
    });
    new Gauge({
      name: "noid_agent_wireguard_peer_handshake_age_seconds",
      help: "Seconds since the latest handshake with each peer (absent: never)",
      labelNames: ["peer", "endpoint"],
      registers,
      async collect() {
        const wg = await self.readWg();
        this.reset();
        if (!wg) return;
        for (const p of handshakeAges(wg, Math.floor(now() / 1000))) if (p.ageSeconds !== undefined) this.set({ peer: p.peer, endpoint: p.endpoint }, p.ageSeconds);
      },
    });
    for (const [dir, help] of [["receive", "received from"], ["transmit", "sent to"]] as const) {
      new Counter({
        name: `noid_agent_wireguard_peer_${dir}_bytes_total`,
        help: `Bytes ${help} each WireGuard peer`,
        labelNames: ["peer"],
        registers,
        async collect() {
          const wg = await self.readWg();
          this.reset();
          for (const p of wg?.peers ?? []) this.inc({ peer: p.publicKey }, dir === "receive" ? p.rxBytes : p.txBytes);
        },
      });
    }
    new Counter({
      name: "noid_agent_guard_drops_total",
      help: "Packets dropped by a VM port's guards, by VM and kind",
      labelNames: ["vm", "kind"],
      registers,
      async collect() {
        if (!self.guards) return;
        let counters: GuardCounter[];
        try {
          counters = await self.guards();
        } catch {
          self.scrapeErrors.inc({ source: "guards" });
          return;
        }
        this.reset();
        for (const c of counters) this.inc({ vm: c.vm, kind: c.kind }, c.packets);
      },
    });
  }

  setSources(s: AgentMetricSources): void {
    this.sources = { ...this.sources, ...s };
  }

  /**
   * The mesh controller's hook: how to read `wg show <ifname> dump` (e.g.
   * `() => readWgDump(ifname, host)`); undefined stops reporting peers.
   */
  setWireguardReader(ifname: string, read: () => Promise<WgObserved | undefined>): void {
    this.wireguard = { ifname, read };
  }

  clearWireguardReader(): void {
    this.wireguard = undefined;
  }

  /** The mesh controller's hook: how to read guard counters (e.g. `() => readGuardCounters(spec, host)`). */
  setGuardReader(read: (() => Promise<GuardCounter[]>) | undefined): void {
    this.guards = read;
  }

  /** The mesh controller's hook: how to read the monitor table (e.g. `() => mesh.monitorReadings()`). */
  setMonitorReader(read: (() => Promise<MonitorScrape>) | undefined): void {
    this.monitor = read;
  }

  /** One detection raised (the mesh controller's onDetection). */
  detected(kind: string): void {
    this.detections.inc({ kind });
  }

  // One scrape reads the kernel once per source, however many metrics use it.
  private monitorRead?: Promise<MonitorScrape>;

  private readMonitor(): Promise<MonitorScrape> {
    if (!this.monitor) return Promise.resolve({ vms: [], networks: [] });
    this.monitorRead ??= this.monitor()
      .catch(() => {
        this.scrapeErrors.inc({ source: "monitor" });
        return { vms: [], networks: [] };
      })
      .finally(() => setImmediate(() => (this.monitorRead = undefined)));
    return this.monitorRead;
  }
  private wgRead?: Promise<WgObserved | undefined>;
  private trafficRead?: Promise<{ vms: VmTraffic[]; networks: NetworkTraffic[] }>;

  private readWg(): Promise<WgObserved | undefined> {
    if (!this.wireguard) return Promise.resolve(undefined);
    this.wgRead ??= this.wireguard
      .read()
      .catch(() => {
        this.scrapeErrors.inc({ source: "wireguard" });
        return undefined;
      })
      .finally(() => setImmediate(() => (this.wgRead = undefined)));
    return this.wgRead;
  }

  private traffic(): Promise<{ vms: VmTraffic[]; networks: NetworkTraffic[] }> {
    const { vmPorts, linkStats, networks } = this.sources;
    if (!linkStats) return Promise.resolve({ vms: [], networks: [] });
    this.trafficRead ??= Promise.all([vmPorts?.() ?? [], linkStats()])
      .then(([vms, stats]) => ({ vms: vmTraffic(vms, stats), networks: networkTraffic(networks?.() ?? [], stats) }))
      .catch(() => {
        this.scrapeErrors.inc({ source: "links" });
        return { vms: [], networks: [] };
      })
      .finally(() => setImmediate(() => (this.trafficRead = undefined)));
    return this.trafficRead;
  }

  /** ReconcileLoop's observer. */
  readonly reconcile = {
    pass: (ms: number, r: PassResult | undefined): void => {
      this.passes.inc({ result: r === undefined ? "error" : r.converged ? "converged" : "unconverged" });
      this.passDuration.observe(ms / 1000);
    },
    actionFailed: (action: string): void => {
      this.actionErrors.inc({ action });
    },
  };

  /** Times one driver call. */
  async timeDriver<T>(driver: string, op: string, f: () => Promise<T>): Promise<T> {
    const end = this.driverLatency.startTimer({ driver, op });
    try {
      const r = await f();
      this.driverOps.inc({ driver, op, result: "ok" });
      return r;
    } catch (e) {
      this.driverOps.inc({ driver, op, result: "error" });
      throw e;
    } finally {
      end();
    }
  }
}

/** A HypervisorDriver whose every call is counted and timed; optional operations stay optional. */
export function instrumentDriver(d: HypervisorDriver, m: Pick<AgentMetrics, "timeDriver">): HypervisorDriver {
  const t = <T>(op: string, f: () => Promise<T>) => m.timeDriver(d.name, op, f);
  const out: HypervisorDriver = {
    name: d.name,
    capabilities: () => d.capabilities(),
    create: (spec: VmCreateSpec) => t("create", () => d.create(spec)),
    start: (id) => t("start", () => d.start(id)),
    stop: (id) => t("stop", () => d.stop(id)),
    destroy: (id) => t("destroy", () => d.destroy(id)),
    inspect: (id) => t("inspect", () => d.inspect(id)),
    list: () => t("list", () => d.list()),
    recover: () => t("recover", () => d.recover()),
  };
  if (d.exec) out.exec = (id: string, argv: string[], opts?: ExecOptions) => t("exec", () => d.exec!(id, argv, opts));
  // A streaming exec is timed until it has started; its run time is the tenant's, not the driver's.
  if (d.execStream) out.execStream = (id, argv, opts) => t("exec_stream", () => d.execStream!(id, argv, opts));
  if (d.saveState) out.saveState = (id, dir, o) => t("save_state", () => d.saveState!(id, dir, o));
  if (d.continueSaved) out.continueSaved = (id) => t("continue_saved", () => d.continueSaved!(id));
  if (d.announce) out.announce = (id) => t("announce", () => d.announce!(id));
  if (d.loadState) out.loadState = (id, dir, from) => t("load_state", () => d.loadState!(id, dir, from));
  if (d.checkpoint) out.checkpoint = (id: string, name: string) => t("checkpoint", () => d.checkpoint!(id, name));
  if (d.restore) out.restore = (id: string, name: string) => t("restore", () => d.restore!(id, name));
  if (d.pause) out.pause = (id: string) => t("pause", () => d.pause!(id));
  if (d.resume) out.resume = (id: string) => t("resume", () => d.resume!(id));
  // Attaching is timed; the console's lifetime is the user's.
  if (d.console) out.console = (id: string) => t("console", () => d.console!(id));
  if (d.logPath) out.logPath = (id: string) => d.logPath!(id);
  return out;
}
