// Network behaviour detection, pure: readings of the monitor table (monitor-rules.ts) in,
// security events with evidence out. Two shapes of signal:
//   - counters that only grow (forged ARP, DHCP replies, undeclared listeners): an increase is
//     an event; per VM and kind at most one every `eventIntervalMs`, carrying every packet seen
//     since the previous one (as the guard drop events do). The first reading is the baseline:
//     what an earlier agent saw it reported.
//   - windows (scans): the kernel keeps the distinct targets of the last `windowSeconds` in
//     sets whose elements expire; a set at or above its threshold is a scan. An event when a
//     scan starts, then at most one per interval while it keeps growing; a scan that stopped
//     (its targets linger until they expire) is not reported again.
import type { MonitorReading } from "./monitor-rules.js";

export const DETECTION_KINDS = ["arp-spoof", "rogue-dhcp", "port-scan", "host-scan", "undeclared-listener"] as const;
export type DetectionKind = (typeof DETECTION_KINDS)[number];

export interface MonitorThresholds {
  /** Distinct ports of one address a VM tried within the window that make a port scan. */
  scanPorts: number;
  /** Distinct addresses a VM tried within the window that make an address scan. */
  scanHosts: number;
  /** Per VM and kind, at most one event this often. */
  eventIntervalMs: number;
}

export const DEFAULT_THRESHOLDS: MonitorThresholds = { scanPorts: 64, scanHosts: 32, eventIntervalMs: 10_000 };

export interface Detection {
  vmId: string;
  kind: DetectionKind;
  /** Packets since the previous event (counter kinds), or distinct targets in the window (scans). */
  count: number;
  /** The evidence, for people: who, what, how many. */
  detail: string;
}

interface Track {
  seen: number;
  pending: number;
  lastSent: number;
  /** Scans: the count of the last event, and whether the scan is still on. */
  lastCount: number;
  active: boolean;
}

const MAX_LISTED = 8;

function list<T>(xs: readonly T[], show: (x: T) => string, max = MAX_LISTED): string {
  const shown = xs.slice(0, max).map(show).join(", ");
  return xs.length > max ? `${shown}, ... (${xs.length} in all)` : shown;
}

const byIp = (a: string, b: string): number => {
  const n = (s: string) => s.split(".").reduce((acc, o) => acc * 256 + Number(o), 0);
  return n(a) - n(b);
};

/** Pure: the address a VM tried most ports of in the window, and those ports (sorted). */
export function widestTarget(targets: readonly { ip: string; port: number }[]): { ip: string; ports: number[] } | undefined {
  const by = new Map<string, Set<number>>();
  for (const t of targets) {
    const s = by.get(t.ip) ?? new Set<number>();
    s.add(t.port);
    by.set(t.ip, s);
  }
  let best: { ip: string; ports: number[] } | undefined;
  for (const [ip, ports] of [...by].sort((a, b) => byIp(a[0], b[0]))) {
    if (!best || ports.size > best.ports.length) best = { ip, ports: [...ports].sort((a, b) => a - b) };
  }
  return best;
}

/** Pure: "22-25, 80, 443" from sorted ports. */
export function portRanges(ports: readonly number[], max = 12): string {
  const ranges: string[] = [];
  for (let i = 0; i < ports.length; ) {
    let j = i;
    while (j + 1 < ports.length && ports[j + 1] === ports[j]! + 1) j++;
    ranges.push(i === j ? `${ports[i]}` : `${ports[i]}-${ports[j]}`);
    i = j + 1;
  }
  return ranges.length > max ? `${ranges.slice(0, max).join(", ")}, ...` : ranges.join(", ");
}

export class BehaviourDetector {
  private readonly tracks = new Map<string, Track>();
  private primed = false;

  constructor(private readonly t: MonitorThresholds = DEFAULT_THRESHOLDS) {
    if (!(t.scanPorts >= 2 && t.scanHosts >= 2 && t.eventIntervalMs >= 0)) throw new Error("monitor thresholds: scanPorts and scanHosts >= 2, eventIntervalMs >= 0");
  }

  /** Feeds one reading of every VM at time `now` (ms); returns the events due. */
  observe(readings: readonly MonitorReading[], now: number): Detection[] {
    const out: Detection[] = [];
    const present = new Set<string>();
    const track = (vmId: string, kind: DetectionKind): Track => {
      const key = `${vmId}\u0000${kind}`;
      present.add(key);
      let tr = this.tracks.get(key);
      if (!tr) {
        tr = { seen: -1, pending: 0, lastSent: -Infinity, lastCount: 0, active: false };
        this.tracks.set(key, tr);
      }
      return tr;
    };
    const counter = (r: MonitorReading, kind: DetectionKind, value: number, detail: (n: number) => string): void => {
      const tr = track(r.vmId, kind);
      // Before the first reading: the baseline. A VM that appears later starts from zero.
      if (tr.seen < 0) tr.seen = this.primed ? 0 : value;
      // A counter that went down was recreated (table rebuilt without it, VM re-created).
      const delta = value >= tr.seen ? value - tr.seen : value;
      tr.seen = value;
      tr.pending += delta;
      if (tr.pending > 0 && now - tr.lastSent >= this.t.eventIntervalMs) {
        out.push({ vmId: r.vmId, kind, count: tr.pending, detail: detail(tr.pending).slice(0, 1000) });
        tr.pending = 0;
        tr.lastSent = now;
      }
    };
    const scan = (r: MonitorReading, kind: DetectionKind, count: number, threshold: number, detail: () => string): void => {
      const tr = track(r.vmId, kind);
      if (count < threshold) {
        tr.active = false;
        return;
      }
      const due = !tr.active || (count > tr.lastCount && now - tr.lastSent >= this.t.eventIntervalMs);
      if (!tr.active) tr.lastCount = 0;
      tr.active = true;
      if (!due) return;
      out.push({ vmId: r.vmId, kind, count, detail: detail().slice(0, 1000) });
      tr.lastSent = now;
      tr.lastCount = count;
    };

    for (const r of readings) {
      counter(r, "arp-spoof", r.arpForged, (n) =>
        `${n} ARP frame(s) with a forged sender; senders in the last window: ${list(r.arpSenders, (s) => `${s.ip} at ${s.mac}`) || "(expired)"}`,
      );
      counter(r, "rogue-dhcp", r.dhcpReplies, (n) =>
        `${n} DHCP reply(ies) sent (the VM runs a DHCP server); to clients: ${list(r.dhcpClients, (c) => c) || "(expired)"}`,
      );
      counter(r, "undeclared-listener", r.listenerAccepts, (n) => {
        const ports = [...new Set(r.listeners.map((l) => l.port))].sort((a, b) => a - b);
        const peers = [...new Set(r.listeners.map((l) => l.peer))].sort(byIp);
        return `${n} connection(s) accepted on undeclared TCP port(s) ${portRanges(ports) || "(expired)"}; peers: ${list(peers, (p) => p) || "(expired)"}`;
      });
      const w = widestTarget(r.targets);
      scan(r, "port-scan", w?.ports.length ?? 0, this.t.scanPorts, () =>
        `${w!.ports.length} distinct ports of ${w!.ip} tried in the window (threshold ${this.t.scanPorts}): ${portRanges(w!.ports)}`,
      );
      const hosts = [...new Set(r.hosts)].sort(byIp);
      scan(r, "host-scan", hosts.length, this.t.scanHosts, () =>
        `${hosts.length} distinct addresses tried in the window (threshold ${this.t.scanHosts}): ${list(hosts, (h) => h)}`,
      );
    }
    for (const k of [...this.tracks.keys()]) if (!present.has(k)) this.tracks.delete(k);
    this.primed = true;
    return out;
  }
}
