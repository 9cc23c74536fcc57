// Hard constraints: which hosts may take a VM at all. Pure; no I/O.
//
// Filters run in a fixed order and a host is counted against the FIRST filter
// that rejects it, so the counts add up to the number of rejected hosts and the
// "why not" line a user reads names the most basic problem (a cordoned host is
// reported as cordoned, not also as short on memory).
import type { HostView, Res, VmRequest } from "./types.js";

export const FILTER_NAMES = [
  "not-ready",
  "cordoned",
  "posture",
  "pinned",
  "driver",
  "labels",
  "vcpus",
  "memory",
  "disk",
] as const;

export type FilterName = (typeof FILTER_NAMES)[number];

/** Free amount of one resource; negative when a host is already over-committed (e.g. it shrank). */
function free(host: HostView, key: keyof Res): number {
  return host.capacity[key] - host.allocated[key];
}

/** True when the host passes the filter. Indexed by name so the order lives in FILTER_NAMES only. */
const PASSES: Record<FilterName, (host: HostView, vm: VmRequest) => boolean> = {
  "not-ready": (h) => h.ready,
  cordoned: (h) => !h.cordoned,
  posture: (h) => !h.postureBlocked,
  pinned: (h, vm) => vm.host === "" || h.name === vm.host,
  driver: (h, vm) => vm.driver === "" || h.drivers.includes(vm.driver),
  labels: (h, vm) =>
    Object.entries(vm.hostSelector).every(
      ([k, v]) => Object.prototype.hasOwnProperty.call(h.labels, k) && h.labels[k] === v,
    ),
  vcpus: (h, vm) => free(h, "vcpus") >= vm.resources.vcpus,
  memory: (h, vm) => free(h, "memoryMb") >= vm.resources.memoryMb,
  disk: (h, vm) => free(h, "diskGb") >= vm.resources.diskGb,
};

/** Filters that look only at what a batch of placements does not change (not the free resources). */
const STATIC_FILTERS = FILTER_NAMES.filter((n) => n !== "vcpus" && n !== "memory" && n !== "disk");

/**
 * True when the filters that do not depend on free resources (readiness,
 * cordon, posture, pin, driver, labels) all pass. With `fitsResources`, the
 * same answer as `rejectedBy(...) === undefined`.
 */
export function passesStatic(host: HostView, vm: VmRequest): boolean {
  return STATIC_FILTERS.every((name) => PASSES[name](host, vm));
}

/** True when free vCPUs, memory and disk (capacity - allocated, per dimension) cover the request. */
export function freeCovers(freeV: number, freeM: number, freeD: number, r: Res): boolean {
  return freeV >= r.vcpus && freeM >= r.memoryMb && freeD >= r.diskGb;
}

/** True when the host has the free vCPUs, memory and disk the VM asks for. */
export function fitsResources(host: HostView, vm: VmRequest): boolean {
  return freeCovers(free(host, "vcpus"), free(host, "memoryMb"), free(host, "diskGb"), vm.resources);
}

/** The first filter that rejects the host, or undefined when it fits. */
export function rejectedBy(host: HostView, vm: VmRequest): FilterName | undefined {
  return FILTER_NAMES.find((name) => !PASSES[name](host, vm));
}

/**
 * True when at least one host can take the VM (stops at the first). With
 * `hint`, the search starts at the host that fit last time (wrapping round)
 * and remembers the one that fits now: a stream of similar asks checks one
 * host each instead of walking past the full ones every time.
 */
export function anyHostFits(hosts: readonly HostView[], vm: VmRequest, hint?: { at: number }): boolean {
  const n = hosts.length;
  const start = hint && hint.at < n ? hint.at : 0;
  for (let k = 0; k < n; k++) {
    const i = start + k < n ? start + k : start + k - n;
    if (rejectedBy(hosts[i]!, vm) === undefined) {
      if (hint) hint.at = i;
      return true;
    }
  }
  return false;
}

/**
 * Splits hosts into those that can take the VM (input order kept) and counts of
 * the rejected ones by filter name. Only filters that rejected something appear.
 */
export function filterHosts(
  hosts: readonly HostView[],
  vm: VmRequest,
): { fit: HostView[]; filtered: Record<string, number> } {
  const fit: HostView[] = [];
  const filtered: Record<string, number> = {};
  for (const host of hosts) {
    const name = rejectedBy(host, vm);
    if (name === undefined) fit.push(host);
    else filtered[name] = (filtered[name] ?? 0) + 1;
  }
  return { fit, filtered };
}

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** What each filter's count means to a user, phrased so the fix is obvious. */
function phrase(name: FilterName, n: number, vm: VmRequest): string {
  switch (name) {
    case "not-ready":
      return `${n} not ready`;
    case "cordoned":
      return `${n} cordoned`;
    case "posture":
      return `${plural(n, "fails", "fail")} the required host posture`;
    case "pinned":
      return `${n} excluded by pin to host ${vm.host}`;
    case "driver":
      return `${plural(n, "lacks", "lack")} driver ${vm.driver}`;
    case "labels": {
      const sel = Object.entries(vm.hostSelector)
        .map(([k, v]) => `${k}=${v}`)
        .join(",");
      return `${plural(n, "lacks", "lack")} labels ${sel}`;
    }
    case "vcpus":
      return `${plural(n, "lacks", "lack")} vCPUs`;
    case "memory":
      return `${plural(n, "lacks", "lack")} memory`;
    case "disk":
      return `${plural(n, "lacks", "lack")} disk`;
  }
}

/**
 * One line explaining why a VM was not placed, e.g.
 * `no host fits vm (2 vCPU, 4096 MB, 10 GB): 1 cordoned, 2 lack memory`.
 */
export function unplacedReason(
  hosts: readonly HostView[],
  vm: VmRequest,
  filtered: Record<string, number>,
): string {
  if (hosts.length === 0) return "no hosts registered";
  const r = vm.resources;
  const head = `no host fits vm (${r.vcpus} vCPU, ${r.memoryMb} MB, ${r.diskGb} GB)`;
  const parts = FILTER_NAMES.filter((name) => (filtered[name] ?? 0) > 0).map((name) =>
    phrase(name, filtered[name] ?? 0, vm),
  );
  // A pin to a host that does not exist is a typo or a removed host: say so
  // instead of a list of counts that hides the real problem.
  if (vm.host !== "" && !hosts.some((h) => h.name === vm.host)) {
    return `${head}: pinned host ${vm.host} is not registered`;
  }
  return parts.length > 0 ? `${head}: ${parts.join(", ")}` : head;
}
