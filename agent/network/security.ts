// Guard drop counters -> security events, pure. Counters only grow (apply keeps their
// values across table replacements); an increase is a security event for that VM and
// kind. Events are aggregated: per VM and kind at most one every `minIntervalMs`, carrying
// every packet dropped since the previous one, so a VM flooding forged frames produces a
// steady trickle of events, not one per packet.
import type { GuardCounter } from "../../mesh/guards.js";

export interface DropEvent {
  vmId: string;
  kind: string;
  /** Packets dropped since the previous event of this VM and kind. */
  count: number;
}

interface Track {
  /** Last counter value seen. */
  seen: number;
  /** Drops seen but not reported yet. */
  pending: number;
  lastSent: number;
}

export class DropAggregator {
  private readonly tracks = new Map<string, Track>();
  private primed = false;

  constructor(private readonly minIntervalMs = 5000) {}

  /**
   * Feeds one reading of all counters at time `now`; returns the events due. The first
   * reading is the baseline (drops before this agent started were reported by the one before).
   */
  observe(counters: readonly GuardCounter[], now: number): DropEvent[] {
    const out: DropEvent[] = [];
    const present = new Set<string>();
    for (const c of counters) {
      const key = `${c.vm}\u0000${c.kind}`;
      present.add(key);
      let t = this.tracks.get(key);
      if (!t) {
        // A VM that appears after the baseline starts from zero: its drops count.
        t = { seen: this.primed ? 0 : c.packets, pending: 0, lastSent: -Infinity };
        this.tracks.set(key, t);
      }
      // A counter that went down was recreated (VM re-created): count from its new value.
      const delta = c.packets >= t.seen ? c.packets - t.seen : c.packets;
      t.seen = c.packets;
      t.pending += delta;
      if (t.pending > 0 && now - t.lastSent >= this.minIntervalMs) {
        out.push({ vmId: c.vm, kind: c.kind, count: t.pending });
        t.pending = 0;
        t.lastSent = now;
      }
    }
    for (const k of [...this.tracks.keys()]) if (!present.has(k)) this.tracks.delete(k);
    this.primed = true;
    return out;
  }
}
