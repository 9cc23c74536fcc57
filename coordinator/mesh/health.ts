// Which hosts' mesh is degraded, from what every agent says (HostCondition): a host whose
// agent cannot apply its mesh, or that other hosts send to over WireGuard without ever
// hearing back (its underlay address is unreachable). Such a host stays in the mesh (it
// may come back) and shows as DEGRADED with the reason in `noidctl hosts`.
export interface HostConditionIn {
  meshError: string;
  unreachablePeers: string[];
}

/** Pure: observer host id -> its condition  =>  host id -> reason (hosts with a reason only). */
export function degradedReasons(conditions: ReadonlyMap<string, HostConditionIn>, nameOf: (id: string) => string): Map<string, string> {
  const own = new Map<string, string>();
  const unheard = new Map<string, string[]>();
  for (const [observer, c] of conditions) {
    if (c.meshError) own.set(observer, c.meshError);
    for (const peer of c.unreachablePeers) unheard.set(peer, [...(unheard.get(peer) ?? []), nameOf(observer)]);
  }
  const out = new Map<string, string>();
  for (const id of new Set([...own.keys(), ...unheard.keys()])) {
    const parts: string[] = [];
    const e = own.get(id);
    if (e) parts.push(`mesh not applied: ${e}`);
    const from = unheard.get(id);
    if (from) parts.push(`no WireGuard answer to ${[...from].sort().join(", ")}`);
    out.set(id, parts.join("; ").slice(0, 500));
  }
  return out;
}

/** Keeps the conditions of connected agents and writes each host's reason when it changes. */
export class MeshHealth {
  private readonly conditions = new Map<string, HostConditionIn>();
  private written = new Map<string, string>();
  private work: Promise<void> = Promise.resolve();

  constructor(
    private readonly setDegraded: (hostId: string, reason: string) => Promise<void>,
    private readonly nameOf: (id: string) => string,
  ) {}

  /** `c` undefined: the observer's session ended, its reports no longer hold. */
  update(observer: string, c: HostConditionIn | undefined): Promise<void> {
    if (c) this.conditions.set(observer, { meshError: c.meshError, unreachablePeers: [...c.unreachablePeers] });
    else this.conditions.delete(observer);
    const next = degradedReasons(this.conditions, this.nameOf);
    const changes: [string, string][] = [];
    for (const [id, reason] of next) if (this.written.get(id) !== reason) changes.push([id, reason]);
    for (const id of this.written.keys()) if (!next.has(id)) changes.push([id, ""]);
    this.written = next;
    this.work = this.work.then(async () => {
      for (const [id, reason] of changes) await this.setDegraded(id, reason);
    });
    return this.work;
  }
}
