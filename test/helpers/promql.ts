// Just enough PromQL to check a dashboard against a scrape: find the series
// selectors in an expression (metric name + label matchers) and tell whether
// a selector matches any sample. Functions, aggregations and range windows are
// skipped; this is not a query engine (no Prometheus is available here), it
// proves each query names metrics and label values a real scrape has.
import type { Exposition } from "./exposition.js";

export interface Matcher {
  label: string;
  op: "=" | "!=" | "=~" | "!~";
  value: string;
}

export interface Selector {
  name: string;
  matchers: Matcher[];
}

const KEYWORDS = new Set(["by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless"]);
const AGGREGATIONS = new Set(["sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values"]);

/** The series selectors in `expr`, e.g. rate(noid_x{a="b"}[5m]) -> [{name: noid_x, matchers: [a="b"]}]. */
export function selectors(expr: string): Selector[] {
  const out: Selector[] = [];
  const re = /([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{([^}]*)\})?/g;
  for (let m = re.exec(expr); m; m = re.exec(expr)) {
    const name = m[1]!;
    const after = expr.slice(m.index + m[0].length).trimStart();
    // A function or aggregation call, a grouping keyword, or a label inside by (...)/without (...).
    if (after.startsWith("(") || KEYWORDS.has(name)) continue;
    if (AGGREGATIONS.has(name) && /^(by|without)\b/.test(after)) continue;
    if (m.index > 0 && /[a-zA-Z0-9_:.]/.test(expr[m.index - 1]!)) continue; // the tail of a number or name
    const before = expr.slice(0, m.index);
    if (/\b(by|without|on|ignoring)\s*\([^)]*$/.test(before)) continue;
    if (/\[[^\]]*$/.test(before)) continue; // inside a range like [5m]
    if (/^\d/.test(name) || /^[0-9.]+$/.test(name)) continue;
    const matchers: Matcher[] = [];
    for (const mm of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"/g)) {
      matchers.push({ label: mm[1]!, op: mm[2] as Matcher["op"], value: mm[3]! });
    }
    out.push({ name, matchers });
  }
  return out;
}

function holds(m: Matcher, v: string): boolean {
  switch (m.op) {
    case "=":
      return v === m.value;
    case "!=":
      return v !== m.value;
    case "=~":
      return new RegExp(`^(?:${m.value})$`).test(v);
    case "!~":
      return !new RegExp(`^(?:${m.value})$`).test(v);
  }
}

/** Does any sample of the scrape match the selector? */
export function selects(e: Exposition, s: Selector): boolean {
  return e.samples.some((x) => x.name === s.name && s.matchers.every((m) => holds(m, x.labels[m.label] ?? "")));
}
