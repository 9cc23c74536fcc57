// Egress of tenant networks, pure: spec + observed host state -> the actions (sysctls, ip
// rules, routes, one nft table replacement) that make the host match; their commands; the
// parsing of what `ip -j` shows. The design is described in egress-spec.ts; the ruleset is
// egress-ruleset.ts. egress-apply.ts runs the actions.
import { counterValues, egressDrift, renderEgress } from "./egress-ruleset.js";
import {
  EGRESS_SYSCTLS,
  EGRESS_TABLE,
  type EgressObserved,
  type EgressSpec,
  type PlacedNetwork,
  RULE_PREF,
  hex,
  markOf,
  placeNetworks,
  slotOfTable,
  tableOf,
  type ObservedRule,
  type ObservedRoute,
} from "./egress-spec.js";

export * from "./egress-spec.js";
export * from "./egress-ruleset.js";

export interface RuleSpec {
  pref: number;
  iif?: string;
  fwmark?: number;
  table: number;
}

export interface RouteSpec {
  table: number;
  dst: string;
  dev: string;
}

export type EgressAction =
  | { kind: "sysctl"; key: string; value: string }
  | { kind: "route-add"; route: RouteSpec }
  | { kind: "rule-add"; rule: RuleSpec }
  | { kind: "nft"; script: string; drift: string[] }
  | { kind: "rule-del"; rule: RuleSpec }
  | { kind: "route-del"; route: RouteSpec };

export function desiredRouting(nets: readonly PlacedNetwork[]): { rules: RuleSpec[]; routes: RouteSpec[] } {
  return {
    rules: nets.flatMap((n) => [
      { pref: RULE_PREF, iif: n.bridge, table: tableOf(n.slot) },
      { pref: RULE_PREF, fwmark: markOf(n.slot), table: tableOf(n.slot) },
    ]),
    routes: nets.map((n) => ({ table: tableOf(n.slot), dst: n.cidr, dev: n.bridge })),
  };
}

const ruleKey = (r: RuleSpec): string => `${r.pref} ${r.iif ?? "-"} ${r.fwmark ?? "-"} ${r.table}`;
const routeKey = (r: RouteSpec): string => `${r.table} ${r.dst} ${r.dev}`;

/** Items of `a` not matched one-for-one by an item of `b`. */
function minus<T>(a: readonly T[], b: readonly T[], key: (x: T) => string): T[] {
  const left = new Map<string, number>();
  for (const x of b) left.set(key(x), (left.get(key(x)) ?? 0) + 1);
  return a.filter((x) => {
    const n = left.get(key(x)) ?? 0;
    if (n === 0) return true;
    left.set(key(x), n - 1);
    return false;
  });
}

/**
 * The actions that make the host match the spec, in a safe order: sysctls, routes and rules
 * of new networks first, then the nft table (one atomic replacement, only when it drifted),
 * then rules and routes no network wants. Empty when the host already matches.
 */
export function planEgress(spec: EgressSpec, observed: EgressObserved): EgressAction[] {
  const nets = placeNetworks(spec, observed.rules, observed.routes);
  const want = desiredRouting(nets);
  const actions: EgressAction[] = [];
  for (const [key, value] of Object.entries(EGRESS_SYSCTLS)) {
    if (observed.sysctls[key] !== value) actions.push({ kind: "sysctl", key, value });
  }
  for (const route of minus(want.routes, observed.routes, routeKey)) actions.push({ kind: "route-add", route });
  for (const rule of minus(want.rules, observed.rules, ruleKey)) actions.push({ kind: "rule-add", rule });
  const drift = egressDrift(spec, nets, observed.nft);
  if (drift.length > 0) {
    const counts = observed.nft !== undefined ? counterValues(observed.nft) : new Map<string, { packets: number; bytes: number }>();
    actions.push({ kind: "nft", script: renderEgress(spec, nets, counts), drift });
  }
  for (const rule of minus(observed.rules, want.rules, ruleKey)) actions.push({ kind: "rule-del", rule });
  for (const route of minus(observed.routes, want.routes, routeKey)) actions.push({ kind: "route-del", route });
  return actions;
}

const ruleArgs = (r: RuleSpec): string[] => [
  "pref",
  String(r.pref),
  ...(r.iif !== undefined ? ["iif", r.iif] : []),
  ...(r.fwmark !== undefined ? ["fwmark", hex(r.fwmark)] : []),
  "lookup",
  String(r.table),
];

/** The command of one action (`input` goes to its stdin). */
export function egressCommand(a: EgressAction): { argv: string[]; input?: string } {
  switch (a.kind) {
    case "sysctl":
      return { argv: ["sysctl", "-qw", `${a.key}=${a.value}`] };
    case "route-add":
      return { argv: ["ip", "route", "replace", a.route.dst, "dev", a.route.dev, "table", String(a.route.table)] };
    case "route-del":
      return { argv: ["ip", "route", "del", a.route.dst, "dev", a.route.dev, "table", String(a.route.table)] };
    case "rule-add":
      return { argv: ["ip", "rule", "add", ...ruleArgs(a.rule)] };
    case "rule-del":
      return { argv: ["ip", "rule", "del", ...ruleArgs(a.rule)] };
    case "nft":
      return { argv: ["nft", "-f", "-"], input: a.script };
  }
}

export function describeEgressAction(a: EgressAction): string {
  switch (a.kind) {
    case "sysctl":
      return `set ${a.key}=${a.value}`;
    case "route-add":
    case "route-del":
      return `${a.kind === "route-add" ? "add" : "remove"} route ${a.route.dst} dev ${a.route.dev} table ${a.route.table}`;
    case "rule-add":
    case "rule-del":
      return `${a.kind === "rule-add" ? "add" : "remove"} ip rule ${ruleArgs(a.rule).join(" ")}`;
    case "nft":
      return `replace table inet ${EGRESS_TABLE} (${a.drift.join("; ")})`;
  }
}

// ---- parsing what the host has ----

const num = (v: unknown): number | undefined => {
  if (typeof v === "number") return v;
  if (typeof v === "string" && /^(0x[0-9a-f]+|\d+)$/i.test(v)) return Number(v);
  return undefined;
};

/** Our rules from `ip -j rule show` (those that look up one of our tables). */
export function parseEgressRules(json: string): ObservedRule[] {
  const list = JSON.parse(json || "[]") as Record<string, unknown>[];
  return list.flatMap((r) => {
    const table = num(r.table);
    if (table === undefined || slotOfTable(table) === undefined) return [];
    const out: ObservedRule = { pref: Number(r.priority), table };
    if (typeof r.iif === "string") out.iif = r.iif;
    const mark = num(r.fwmark);
    if (mark !== undefined) out.fwmark = mark;
    return [out];
  });
}

/** Routes in our tables from `ip -j route show table all`. */
export function parseEgressRoutes(json: string): ObservedRoute[] {
  const list = JSON.parse(json || "[]") as Record<string, unknown>[];
  return list.flatMap((r) => {
    const table = num(r.table);
    if (table === undefined || slotOfTable(table) === undefined) return [];
    return [{ table, dst: String(r.dst), dev: String(r.dev ?? "") }];
  });
}
