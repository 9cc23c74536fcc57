// The agent's mesh controller: the session hands it every MeshSnapshot; it computes this
// host's share (view.ts, pure), applies it by diff (mesh/apply.ts: WireGuard peers, VXLAN,
// bridges, FDB), then the VM port guards (mesh/guards-apply.ts), one pass at a time.
// A failed pass is retried with backoff; every `resyncMs` a pass runs anyway and repairs
// drift (reported as a security event). Guard drop counters are polled and reported as
// security events (security.ts aggregates them). With `monitor`, the pass also applies the
// watch-only table `bridge noid_monitor` (monitor-rules.ts) and the poll feeds its readings to
// the behaviour detector (monitor-detect.ts): ARP spoofing, DHCP servers, scans, undeclared
// listeners become security events too.
import { writeFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { type Runner, type Spawner, run as defaultRun, isAlive, spawnDetached, type ProcessRef } from "../../common/run.js";
import type { MeshSnapshot, SecurityEvent } from "../../gen/noid/v1/agent.js";
import { describeAction } from "../../mesh/actions.js";
import { applyHostMesh } from "../../mesh/apply.js";
import { applyGuards, readGuardCounters } from "../../mesh/guards-apply.js";
import { readWgDump } from "../../mesh/wireguard.js";
import { PeerLiveness } from "./liveness.js";
import type { GuardSpec } from "../../mesh/guards.js";
import type { NetworkSpec } from "../../mesh/topology.js";
import { type BackoffPolicy, backoffDelay } from "../backoff.js";
import { DropAggregator } from "./security.js";
import { BehaviourDetector, type Detection, type MonitorThresholds } from "./monitor-detect.js";
import { applyMonitor, readMonitor } from "./monitor-apply.js";
import { type MonitorSpec, monitorSpecOf } from "./monitor-rules.js";
import { type MeshView, type VmAttachment, guardSpecOf, meshView } from "./view.js";

/**
 * Called after the mesh of a pass is applied, with the networks this host carries (their
 * bridges exist then) and the view: where per-network egress (NAT, policy) is applied.
 * A throw fails the pass, which is retried like any other failure.
 */
export type NetworksHook = (networks: readonly NetworkSpec[], view: MeshView) => Promise<void>;

export interface MeshControllerOptions {
  privateKey: string;
  wgIfname: string;
  uplinkMtu: number;
  /** VM id -> host-side port of every VM the driver has (driver.list()). */
  ports: () => Promise<Map<string, string>>;
  onSecurity: (e: Omit<SecurityEvent, "hostId">) => void;
  logger: Logger;
  /** wireguard-go's log and the record of its process go here. */
  stateDir: string;
  /** The host's mesh condition, whenever it changes (see HostCondition in agent.proto). */
  onCondition?: (c: MeshCondition) => void;
  /** Consecutive failed passes before the host calls itself degraded (default 3). */
  degradedAfter?: number;
  /** Egress hook (see NetworksHook). */
  onNetworks?: NetworksHook;
  runner?: Runner;
  spawner?: Spawner;
  /** A pass runs at least this often (default 30 s). */
  resyncMs?: number;
  /** Guard counters are read this often (default 2 s). */
  countersMs?: number;
  /** Per VM and kind, at most one drop event this often (default 5 s). */
  eventIntervalMs?: number;
  backoff?: BackoffPolicy;
  /** Network behaviour monitoring (table bridge noid_monitor, monitor-rules.ts); absent: none. */
  monitor?: MonitorOptions;
}

export interface MonitorOptions {
  windowSeconds: number;
  setSize: number;
  thresholds: MonitorThresholds;
  /** The TCP ports a local VM declared it listens on ("any": not watched). */
  listen: (vmId: string) => number[] | "any";
  /** Every detection, after it was sent as a security event (metrics). */
  onDetection?: (d: Detection) => void;
}

export interface MeshCondition {
  meshError: string;
  unreachablePeers: string[];
}

const RETRY: BackoffPolicy = { initialMs: 500, maxMs: 15_000 };

export class MeshController {
  private snapshot: MeshSnapshot | undefined;
  private selfId: string | undefined;
  /** Bumped on every new snapshot; a pass records the generation it applied. */
  private generation = 0;
  private appliedGeneration = -1;
  private view: MeshView | undefined;
  private lastDesiredKey = "";
  private lastGuardKey = "";
  private guardSpec: GuardSpec | undefined;
  private monitorSpec: MonitorSpec | undefined;
  private lastMonitorKey = "";
  private readonly detector: BehaviourDetector | undefined;

  /** The monitor table's readings (per-VM and per-network traffic, detection state); empty before the first pass. */
  async monitorReadings(): Promise<Awaited<ReturnType<typeof readMonitor>>> {
    return this.monitorSpec ? readMonitor(this.monitorSpec, { runner: this.runner }) : { vms: [], networks: [] };
  }

  /** This host's tenant networks and their devices as last applied (metrics). */
  networkDevices(): { networkId: string; vxlan: string; bridge: string }[] {
    return (this.view?.desired.networks ?? []).map((n) => ({ networkId: n.networkId, vxlan: n.vxlan.name, bridge: n.bridge.name }));
  }

  /** The guard counters of the VM ports as applied now (metrics); [] before the first pass. */
  async guardCounters(): Promise<Awaited<ReturnType<typeof readGuardCounters>>> {
    return this.guardSpec ? readGuardCounters(this.guardSpec, { runner: this.runner }) : [];
  }

  /** This host's WireGuard interface as the kernel/wireguard-go reports it (metrics). */
  async wireguard(): Promise<Awaited<ReturnType<typeof readWgDump>>> {
    return readWgDump(this.opts.wgIfname, { runner: this.runner });
  }
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;
  private failures = 0;
  private lastError: string | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private resyncTimer: NodeJS.Timeout | undefined;
  private countersTimer: NodeJS.Timeout | undefined;
  private readonly drops: DropAggregator;
  private readonly runner: Runner;
  private stopped = false;
  private readonly waiters = new Set<() => void>();
  private readonly liveness = new PeerLiveness();
  private unreachable: string[] = [];
  private lastCondition = JSON.stringify({ meshError: "", unreachablePeers: [] });

  constructor(private readonly opts: MeshControllerOptions) {
    this.runner = opts.runner ?? defaultRun;
    this.drops = new DropAggregator(opts.eventIntervalMs ?? 5000);
    if (opts.monitor) this.detector = new BehaviourDetector(opts.monitor.thresholds);
  }

  start(): void {
    this.resyncTimer = setInterval(() => void this.sync().catch(() => undefined), this.opts.resyncMs ?? 30_000);
    this.resyncTimer.unref();
    this.countersTimer = setInterval(() => void this.pollCounters(), this.opts.countersMs ?? 2000);
    this.countersTimer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of [this.retryTimer, this.resyncTimer, this.countersTimer]) if (t) clearTimeout(t);
    await this.running?.catch(() => undefined);
    for (const w of this.waiters) w();
  }

  /** A new view of the mesh from the coordinator (for host `selfId`). */
  setSnapshot(snapshot: MeshSnapshot, selfId: string): void {
    this.snapshot = snapshot;
    this.selfId = selfId;
    this.generation++;
    void this.sync().catch(() => undefined);
  }

  /** This host's address inside the WireGuard mesh, once the coordinator sent a view. */
  selfMeshIp(): string | undefined {
    return this.snapshot?.members.find((m) => m.hostId === this.selfId)?.meshIp || undefined;
  }

  /** Consecutive failed passes and the last error (for a degraded report). */
  health(): { failures: number; lastError?: string } {
    return { failures: this.failures, ...(this.lastError ? { lastError: this.lastError } : {}) };
  }

  /**
   * Runs a pass that starts after this call (coalescing callers while one runs). Rejects
   * with the pass's error; a failure also schedules a retry with backoff.
   */
  sync(): Promise<void> {
    if (this.queued) return this.queued;
    const prev = this.running ?? Promise.resolve();
    const next = prev
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        const p = this.pass();
        this.running = p;
        return p.finally(() => {
          if (this.running === p) this.running = undefined;
        });
      });
    this.queued = next;
    return next;
  }

  /**
   * The attachment of a VM of this host, once a snapshot that has it is applied (its
   * bridge exists). Waits up to `timeoutMs` for the coordinator's snapshot and the pass.
   */
  async attachment(vmId: string, timeoutMs: number): Promise<VmAttachment> {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const a = this.view?.local.get(vmId);
      if (a && this.appliedGeneration === this.generation) return a;
      if (this.stopped) throw new Error("the mesh controller is stopped");
      const left = until - Date.now();
      if (left <= 0) {
        const why = a ? `its network is not applied yet${this.lastError ? ` (${this.lastError})` : ""}` : "the coordinator's mesh view does not have it yet";
        throw Object.assign(new Error(`network of VM ${vmId} unavailable: ${why}`), { code: "UNAVAILABLE" });
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, Math.min(left, 500));
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        this.waiters.add(done);
      });
    }
  }

  /** Re-applies the guards now (a VM port appeared or is about to start); throws if they cannot be set. */
  async syncGuards(): Promise<void> {
    await this.sync();
  }

  /** True when the last applied guards cover VM `vmId`'s port (or the VM is on no network). */
  guarded(vmId: string): boolean {
    if (!this.view?.local.has(vmId)) return true;
    return this.guardSpec?.vms.some((v) => v.vmId === vmId) ?? false;
  }

  private async pass(): Promise<void> {
    if (!this.snapshot || !this.selfId || this.stopped) return;
    const generation = this.generation;
    try {
      const view = meshView(this.snapshot, this.selfId, { wgIfname: this.opts.wgIfname, uplinkMtu: this.opts.uplinkMtu });
      const desiredKey = JSON.stringify(view.desired);
      const r = await applyHostMesh(view.desired, {
        runner: this.runner,
        privateKey: this.opts.privateKey,
        spawner: this.opts.spawner ?? spawnDetached,
        wgLogFile: join(this.opts.stateDir, "wireguard-go.log"),
      });
      if (r.wireguard.process) this.recordWireguard(r.wireguard.process);
      if (r.actions.length > 0) {
        const what = r.actions.map(describeAction);
        if (desiredKey === this.lastDesiredKey) {
          // Nothing changed on our side, yet the host differed: someone changed it.
          this.opts.logger.warn({ repaired: what }, "mesh drift repaired");
          this.opts.onSecurity({ vmId: "", kind: "drift", count: what.length, detail: `mesh repaired: ${what.join("; ")}`.slice(0, 1000) });
        } else {
          this.opts.logger.info({ actions: what }, "mesh applied");
        }
      }
      this.lastDesiredKey = desiredKey;
      await this.opts.onNetworks?.(view.desired.networks, view);

      const ports = await this.opts.ports();
      const spec = guardSpecOf(view, ports);
      const guardKey = JSON.stringify(spec);
      const repaired = await applyGuards(spec, { runner: this.runner });
      if (repaired.length > 0 && guardKey === this.lastGuardKey) {
        this.opts.logger.warn({ drift: repaired }, "guard drift repaired");
        this.opts.onSecurity({ vmId: "", kind: "drift", count: repaired.length, detail: `guards repaired: ${repaired.join("; ")}`.slice(0, 1000) });
      }
      this.lastGuardKey = guardKey;
      this.guardSpec = spec;
      await this.applyMonitor(view, ports);
      this.view = view;
      this.appliedGeneration = generation;
      this.failures = 0;
      this.lastError = undefined;
      this.reportCondition();
    } catch (e) {
      this.failures++;
      this.lastError = e instanceof Error ? e.message : String(e);
      this.opts.logger.warn({ err: this.lastError, failures: this.failures }, "mesh pass failed; retrying");
      if (this.retryTimer) clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => void this.sync().catch(() => undefined), backoffDelay(this.failures - 1, this.opts.backoff ?? RETRY));
      this.retryTimer.unref();
      this.reportCondition();
      throw e;
    } finally {
      for (const w of [...this.waiters]) {
        this.waiters.delete(w);
        w();
      }
    }
  }

  /**
   * The monitor table follows the guards. It only watches, so a failure is logged and left to
   * the next pass (every resyncMs) instead of holding VMs back.
   */
  private async applyMonitor(view: MeshView, ports: ReadonlyMap<string, string>): Promise<void> {
    const m = this.opts.monitor;
    if (!m) return;
    try {
      const listen = (vmId: string): number[] | "any" => {
        try {
          return m.listen(vmId);
        } catch (e) {
          this.opts.logger.warn({ vm: vmId, err: e instanceof Error ? e.message : String(e) }, "bad listen declaration: treating it as none");
          return [];
        }
      };
      const spec = monitorSpecOf(view, ports, listen, m);
      const key = JSON.stringify(spec);
      const repaired = await applyMonitor(spec, { runner: this.runner });
      if (repaired.length > 0 && key === this.lastMonitorKey) {
        this.opts.logger.warn({ drift: repaired }, "monitor drift repaired");
        this.opts.onSecurity({ vmId: "", kind: "drift", count: repaired.length, detail: `monitor repaired: ${repaired.join("; ")}`.slice(0, 1000) });
      }
      this.lastMonitorKey = key;
      this.monitorSpec = spec;
    } catch (e) {
      this.opts.logger.warn({ err: e instanceof Error ? e.message : String(e) }, "applying the monitor table failed; retrying at the next pass");
    }
  }

  private async pollMonitor(): Promise<void> {
    const spec = this.monitorSpec;
    if (!spec || !this.detector || this.stopped) return;
    try {
      const { vms } = await readMonitor(spec, { runner: this.runner });
      for (const d of this.detector.observe(vms, Date.now())) {
        this.opts.logger.warn({ vm: d.vmId, kind: d.kind, count: d.count, detail: d.detail }, "suspicious network behaviour");
        this.opts.onSecurity({ vmId: d.vmId, kind: d.kind, count: d.count, detail: d.detail });
        this.opts.monitor?.onDetection?.(d);
      }
    } catch (e) {
      this.opts.logger.debug({ err: e }, "reading the monitor table failed");
    }
  }

  /** The wireguard-go we started, so that whoever tears the host down can stop it by PID. */
  private recordWireguard(p: ProcessRef): void {
    const f = join(this.opts.stateDir, "wireguard-go.json");
    if (isAlive(p)) writeFileSync(f, JSON.stringify(p));
    else rmSync(f, { force: true });
  }

  private reportCondition(): void {
    const c: MeshCondition = {
      meshError: this.failures >= (this.opts.degradedAfter ?? 3) ? (this.lastError ?? "failing") : "",
      unreachablePeers: this.unreachable,
    };
    const key = JSON.stringify(c);
    if (key === this.lastCondition) return;
    this.lastCondition = key;
    if (c.meshError || c.unreachablePeers.length) this.opts.logger.warn(c, "mesh degraded");
    else this.opts.logger.info("mesh healthy again");
    this.opts.onCondition?.(c);
  }

  /** Peers we send to that never answer, by host id (from `wg show dump`). */
  private async checkPeers(): Promise<void> {
    const view = this.view;
    if (!view) return;
    const wg = await readWgDump(view.desired.wg.ifname, { runner: this.runner });
    if (!wg) return;
    const byKey = new Map(view.desired.wg.peers.map((p) => [p.publicKey, p.hostId]));
    this.unreachable = this.liveness
      .observe(wg.peers, Date.now())
      .flatMap((k) => (byKey.has(k) ? [byKey.get(k)!] : []))
      .sort();
    this.reportCondition();
  }

  private async pollCounters(): Promise<void> {
    await this.checkPeers().catch((e: unknown) => this.opts.logger.debug({ err: e }, "reading WireGuard peers failed"));
    await this.pollMonitor();
    const spec = this.guardSpec;
    if (!spec || this.stopped) return;
    try {
      const counters = await readGuardCounters(spec, { runner: this.runner });
      for (const ev of this.drops.observe(counters, Date.now())) {
        this.opts.logger.warn({ vm: ev.vmId, kind: ev.kind, packets: ev.count }, "guard dropped packets");
        this.opts.onSecurity({ vmId: ev.vmId, kind: ev.kind, count: ev.count, detail: `${ev.count} packet(s) dropped by the ${ev.kind} guard` });
      }
    } catch (e) {
      this.opts.logger.debug({ err: e }, "reading guard counters failed");
    }
  }
}
