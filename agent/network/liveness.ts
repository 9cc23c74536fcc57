// Which WireGuard peers never answer, pure: a peer is unreachable when this host kept
// sending to it (its tx counter rose in several readings) and nothing came back (rx
// unchanged) for `windowMs`. WireGuard answers data with at least a keepalive within
// about 10 s, and retries an unanswered handshake every 5 s, so a silent peer that we keep
// sending to is one whose underlay address does not reach it. A single rise is not enough:
// our own passive keepalive (sent 10 s after the peer's last data) gets no answer by design.
// A peer we send nothing to is not judged.
import type { WgObservedPeer } from "../../mesh/wireguard.js";

interface Track {
  rx: number;
  /** When rx last changed (or the peer was first seen). */
  rxAt: number;
  /** tx at the previous reading. */
  tx: number;
  /** Readings in which tx rose since rx last changed. */
  rises: number;
}

export class PeerLiveness {
  private readonly tracks = new Map<string, Track>();

  constructor(
    private readonly windowMs = 25_000,
    private readonly minRises = 3,
  ) {}

  /** Feeds one `wg show dump` reading; returns the public keys of unreachable peers. */
  observe(peers: readonly WgObservedPeer[], now: number): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    for (const p of peers) {
      seen.add(p.publicKey);
      let t = this.tracks.get(p.publicKey);
      if (!t || p.rxBytes !== t.rx) {
        t = { rx: p.rxBytes, rxAt: now, tx: p.txBytes, rises: 0 };
        this.tracks.set(p.publicKey, t);
      } else if (p.txBytes !== t.tx) {
        if (p.txBytes > t.tx) t.rises++;
        t.tx = p.txBytes;
      }
      if (now - t.rxAt >= this.windowMs && t.rises >= this.minRises) out.push(p.publicKey);
    }
    for (const k of [...this.tracks.keys()]) if (!seen.has(k)) this.tracks.delete(k);
    return out.sort();
  }
}
