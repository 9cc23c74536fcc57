// Security events from agents -> audit entries "security.<kind>". Agents aggregate already;
// this is the coordinator's own flood guard: per host, VM and kind at most one audit entry
// per window, the counts of events that arrive within it summed into the next entry (written
// when the window ends), and a bound on the entries per window across all sources.
import type { AuditInput, Clock } from "./audit-log.js";
import { invalid } from "../common/errors.js";

export interface SecurityEventIn {
  hostId: string;
  hostName: string;
  vmId: string;
  /** Owner of the VM, when known. */
  owner: string;
  kind: string;
  count: number;
  detail: string;
}

interface Pending {
  ev: SecurityEventIn;
  count: number;
  reports: number;
}

const KIND_RE = /^[a-z][a-z0-9-]{0,31}$/;
const MAX_PENDING = 10_000;

export function checkSecurityEvent(e: { kind: string; vmId: string; detail: string }): void {
  if (!KIND_RE.test(e.kind)) throw invalid("security_event.kind", `"${e.kind}" is not an event kind`);
  if (e.vmId.length > 64) throw invalid("security_event.vm_id", "is too long");
  if (e.detail.length > 2000) throw invalid("security_event.detail", "is too long");
}

export class SecurityAudit {
  private readonly last = new Map<string, number>();
  private readonly pending = new Map<string, Pending>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private windowStart = 0;
  private inWindow = 0;
  /** Entries that did not fit in a window (over the global bound), for the log. */
  dropped = 0;

  constructor(
    private readonly write: (e: AuditInput) => Promise<void>,
    private readonly clock: Clock,
    private readonly windowMs = 10_000,
    private readonly maxPerWindow = 200,
  ) {}

  /** Records (now or at the end of the source's window) one event. */
  async record(ev: SecurityEventIn): Promise<void> {
    const key = `${ev.hostId}/${ev.vmId}/${ev.kind}`;
    const now = this.clock.now().getTime();
    const last = this.last.get(key);
    if (last !== undefined && now - last < this.windowMs) {
      const p = this.pending.get(key);
      if (p) {
        p.count += ev.count;
        p.reports++;
        p.ev = ev;
      } else if (this.pending.size < MAX_PENDING) {
        this.pending.set(key, { ev, count: ev.count, reports: 1 });
        const t = setTimeout(() => {
          this.timers.delete(t);
          void this.flush(key).catch(() => undefined);
        }, last + this.windowMs - now);
        t.unref();
        this.timers.add(t);
      } else this.dropped++;
      return;
    }
    this.last.set(key, now);
    await this.emit(ev, ev.count, 1);
  }

  private async flush(key: string): Promise<void> {
    const p = this.pending.get(key);
    if (!p) return;
    this.pending.delete(key);
    this.last.set(key, this.clock.now().getTime());
    await this.emit(p.ev, p.count, p.reports);
  }

  private async emit(ev: SecurityEventIn, count: number, reports: number): Promise<void> {
    const now = this.clock.now().getTime();
    if (now - this.windowStart >= this.windowMs) {
      this.windowStart = now;
      this.inWindow = 0;
    }
    if (this.inWindow >= this.maxPerWindow) {
      this.dropped++;
      return;
    }
    this.inWindow++;
    const agg = reports > 1 ? ` (${reports} reports aggregated)` : "";
    await this.write({
      event: `security.${ev.kind}`,
      user: ev.owner,
      vm: ev.vmId,
      host: ev.hostName || ev.hostId,
      success: false,
      detail: `${ev.detail}; count ${count}${agg}`.slice(0, 2000),
      peer: "",
    });
  }

  stop(): void {
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
  }
}
