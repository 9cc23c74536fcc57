// The chaos suite's judge. Pure: the history of API calls the clients made
// (with their outcome), what the hosts reported running over time, the
// allocation records sampled over time, and the final state read from etcd
// once the cluster settled, in; the violations, out.
//
// What must hold:
// - no acknowledged VM lost: a create that was answered OK, with no destroy
//   ever sent for it, is in the final state (with the id it was given);
// - an acknowledged destroy sticks: the VM is gone at the end;
// - no VM on two hosts: never reported running by two hosts at once, and at
//   most one assignment in the final state;
// - no IP given twice: no two VMs of the final state share an address of a
//   network, and no two acknowledged creates got the same address while both
//   were alive;
// - capacity never exceeded: no sampled allocation and no host's running set
//   ever exceeds the host's capacity.
export interface CallRecord {
  op: "create" | "destroy";
  name: string;
  /** The VM id: from the answer (create) or the one asked for (destroy). */
  vmId?: string;
  start: number;
  end: number;
  ok: boolean;
  ip?: string;
  networkId?: string;
  error?: string;
}

export interface RunningReport {
  at: number;
  host: string;
  /** VM ids the host runs from `at` on (until its next report). */
  running: string[];
}

export interface Resources {
  vcpus: number;
  memoryMb: number;
}

export interface AllocSample {
  at: number;
  host: string;
  allocated: Resources;
}

export interface FinalVm {
  id: string;
  name: string;
  hostId: string;
  ip: string;
  networkId: string;
  resources: Resources;
}

export interface FinalState {
  vms: FinalVm[];
  /** assign/<host>/<vm> keys. */
  assignments: { host: string; vmId: string }[];
  capacity: Record<string, Resources>;
}

export interface ChaosHistory {
  calls: CallRecord[];
  running: RunningReport[];
  allocs: AllocSample[];
  final: FinalState;
  /** Resources of every VM the clients created, by id (to add up running sets). */
  sizes: Record<string, Resources>;
}

/**
 * "unsettled": the cluster did not converge after the fault healed; "not-rescheduled": a
 * reschedule-policy VM of a host lost well past its grace was still on that host at the end;
 * "diverged": a coordinator replica's view (its informers) still differed from etcd once the
 * cluster had settled (all added by the runner).
 */
export type ViolationKind = "lost" | "resurrected" | "two-hosts" | "ip-twice" | "over-capacity" | "unsettled" | "not-rescheduled" | "diverged";

export interface Violation {
  kind: ViolationKind;
  detail: string;
}

const over = (a: Resources, cap: Resources | undefined): boolean => cap !== undefined && (a.vcpus > cap.vcpus || a.memoryMb > cap.memoryMb);

export function checkHistory(h: ChaosHistory): Violation[] {
  const out: Violation[] = [];
  const finalById = new Map(h.final.vms.map((v) => [v.id, v]));
  const destroyAsked = new Set(h.calls.filter((c) => c.op === "destroy" && c.vmId).map((c) => c.vmId!));
  const acked = h.calls.filter((c) => c.op === "create" && c.ok && c.vmId);

  for (const c of acked) {
    if (!destroyAsked.has(c.vmId!) && !finalById.has(c.vmId!)) out.push({ kind: "lost", detail: `VM ${c.name} (${c.vmId}) created at ${c.end} is gone` });
  }
  for (const c of h.calls) {
    if (c.op === "destroy" && c.ok && c.vmId && finalById.has(c.vmId)) out.push({ kind: "resurrected", detail: `VM ${c.name} (${c.vmId}) destroyed at ${c.end} is still there` });
  }

  // Running sets over time: after each report, is any VM of that host also running elsewhere?
  const sets = new Map<string, Set<string>>();
  const doubled = new Set<string>();
  for (const r of [...h.running].sort((a, b) => a.at - b.at)) {
    sets.set(r.host, new Set(r.running));
    for (const id of r.running) {
      if (doubled.has(id)) continue;
      const others = [...sets].filter(([host, s]) => host !== r.host && s.has(id)).map(([host]) => host);
      if (others.length > 0) {
        doubled.add(id);
        out.push({ kind: "two-hosts", detail: `VM ${id} ran on ${r.host} and ${others.join(", ")} at ${r.at}` });
      }
    }
    const used = r.running.reduce((a, id) => ({ vcpus: a.vcpus + (h.sizes[id]?.vcpus ?? 0), memoryMb: a.memoryMb + (h.sizes[id]?.memoryMb ?? 0) }), { vcpus: 0, memoryMb: 0 });
    if (over(used, h.final.capacity[r.host])) out.push({ kind: "over-capacity", detail: `host ${r.host} ran ${used.vcpus} vCPU / ${used.memoryMb} MB at ${r.at}` });
  }
  const assigned = new Map<string, string[]>();
  for (const a of h.final.assignments) assigned.set(a.vmId, [...(assigned.get(a.vmId) ?? []), a.host]);
  for (const [id, hosts] of assigned) {
    if (hosts.length > 1 && !doubled.has(id)) out.push({ kind: "two-hosts", detail: `VM ${id} is assigned to ${hosts.join(", ")}` });
  }

  // Addresses: in the final state, and among acknowledged creates alive at the same time.
  const byIp = new Map<string, string[]>();
  for (const v of h.final.vms) {
    if (!v.ip) continue;
    const k = `${v.networkId}/${v.ip.split("/")[0]}`;
    byIp.set(k, [...(byIp.get(k) ?? []), v.id]);
  }
  const ipTwice = new Set<string>();
  for (const [k, ids] of byIp) {
    if (ids.length > 1) {
      ipTwice.add(k);
      out.push({ kind: "ip-twice", detail: `${k} held by ${ids.join(", ")}` });
    }
  }
  const destroyedAt = new Map<string, number>();
  for (const c of h.calls) if (c.op === "destroy" && c.vmId) destroyedAt.set(c.vmId, Math.min(destroyedAt.get(c.vmId) ?? Infinity, c.start));
  const withIp = acked.filter((c) => c.ip).sort((a, b) => a.end - b.end);
  for (let i = 0; i < withIp.length; i++) {
    for (let j = i + 1; j < withIp.length; j++) {
      const a = withIp[i]!;
      const b = withIp[j]!;
      const k = `${a.networkId ?? ""}/${a.ip!.split("/")[0]}`;
      if (ipTwice.has(k) || a.ip !== b.ip || a.networkId !== b.networkId || a.vmId === b.vmId) continue;
      // b got a's address while a was alive: a was not being destroyed before b's create began.
      if ((destroyedAt.get(a.vmId!) ?? Infinity) > b.start) {
        ipTwice.add(k);
        out.push({ kind: "ip-twice", detail: `${k} given to ${a.name} and then to ${b.name} while ${a.name} was alive` });
      }
    }
  }

  for (const s of h.allocs) {
    if (over(s.allocated, h.final.capacity[s.host])) out.push({ kind: "over-capacity", detail: `host ${s.host} allocated ${s.allocated.vcpus} vCPU / ${s.allocated.memoryMb} MB at ${s.at}` });
  }
  return out;
}

/** Violations by kind (every kind present, zeros included), for the summary. */
export function countByKind(vs: readonly Violation[]): Record<ViolationKind, number> {
  const out: Record<ViolationKind, number> = { lost: 0, resurrected: 0, "two-hosts": 0, "ip-twice": 0, "over-capacity": 0, unsettled: 0, "not-rescheduled": 0, diverged: 0 };
  for (const v of vs) out[v.kind]++;
  return out;
}

/** What one replica shows (or etcd holds): hosts by name, VMs by id. */
export interface ClusterView {
  hosts: Record<string, { ready: boolean; vmCount: number }>;
  vms: Record<string, { phase: string; host: string }>;
}

/** Pure: how a replica's view differs from etcd's (at most `max` differences, then a count). */
export function viewDifferences(view: ClusterView, truth: ClusterView, max = 5): string[] {
  const out: string[] = [];
  const show = (x: unknown) => (x === undefined ? "absent" : JSON.stringify(x));
  for (const [kind, a, b] of [["host", view.hosts, truth.hosts], ["VM", view.vms, truth.vms]] as const) {
    for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) {
      const x = (a as Record<string, unknown>)[k];
      const y = (b as Record<string, unknown>)[k];
      if (JSON.stringify(x) !== JSON.stringify(y)) out.push(`${kind} ${k}: shows ${show(x)}, etcd ${show(y)}`);
    }
  }
  return out.length > max ? [...out.slice(0, max), `and ${out.length - max} more`] : out;
}
