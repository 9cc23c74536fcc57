// Which WireGuard peers never answer, pure: a peer is unreachable when this host sent it
// something (its tx counter rose) and nothing came back (rx unchanged) for `windowMs`.
// WireGuard answers any data with at least a keepalive within about 10 s, so a silent
// peer that we keep sending to is one whose underlay address does not reach it. A peer
// we send nothing to is not judged.
import type { WgObservedPeer } from "../../mesh/wireguard.js";

interface Track {
  rx: number;
  /** When rx last changed (or the peer was first seen). */
  rxAt: number;
  /** tx when rx last changed. */
  txAtRx: number;
}

export class PeerLiveness {
  private readonly tracks = new Map<string, Track>();

  constructor(private readonly windowMs = 25_000) {}

  /** Feeds one `wg show dump` reading; returns the public keys of unreachable peers. */
  observe(peers: readonly WgObservedPeer[], now: number): string[] {
    const out: string[] = [];
    const seen = new Set<string>();
    for (const p of peers) {
      seen.add(p.publicKey);
      let t = this.tracks.get(p.publicKey);
      if (!t || p.rxBytes !== t.rx) {
        t = { rx: p.rxBytes, rxAt: now, txAtRx: p.txBytes };
        this.tracks.set(p.publicKey, t);
      }
      if (now - t.rxAt >= this.windowMs && p.txBytes > t.txAtRx) out.push(p.publicKey);
    }
    for (const k of [...this.tracks.keys()]) if (!seen.has(k)) this.tracks.delete(k);
    return out.sort();
  }
}
