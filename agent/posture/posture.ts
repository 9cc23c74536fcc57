// Host posture, pure: what a hypervisor host's files and firewall say -> which of the
// hardening plan's checks pass. The agent reports the result at registration; the
// hardening script (deploy/harden.ts) uses the same checks as its postcondition.
//
// Checks (name: what must hold):
//   ssh-password-off   sshd's effective PasswordAuthentication is "no"
//   ssh-restricted     every rule that opens the SSH port also matches a source address
//   auto-updates       unattended-upgrades installed and enabled by APT::Periodic
//   firewall           an input chain with policy drop that opens only the allowed ports
//   fail2ban           fail2ban installed (optional: reported, never required)

export interface PostureInputs {
  /** /etc/ssh/sshd_config, undefined when absent. */
  sshdConfig: string | undefined;
  /** Files matched by sshd_config's Include lines, in the order sshd reads them. */
  sshdIncludes: ReadonlyMap<string, string>;
  /** /etc/apt/apt.conf.d/* contents, by file name, in name order. */
  aptConf: ReadonlyMap<string, string>;
  unattendedUpgradesInstalled: boolean;
  fail2banInstalled: boolean;
  /** Parsed `nft -j list ruleset`, undefined when nft could not be read. */
  nftRuleset: unknown;
}

export interface PosturePolicy {
  sshPort: number;
  /** TCP ports the host may open to anyone (SSH excluded: it must be restricted). */
  tcp: readonly number[];
  udp: readonly number[];
}

export interface PostureCheck {
  name: string;
  ok: boolean;
  optional: boolean;
  detail: string;
}

export interface Posture {
  /** True when every required check passes. */
  ok: boolean;
  checks: PostureCheck[];
}

export const DEFAULT_POLICY: PosturePolicy = { sshPort: 22, tcp: [7654], udp: [51820] };

// ---------------------------------------------------------------------------------------------
// sshd: the first value of a keyword wins; Include splices files in place; lines after a
// Match (other than "Match all") are conditional and do not set the global value.

interface SshdLine {
  key: string;
  args: string[];
}

function sshdLines(text: string): SshdLine[] {
  const out: SshdLine[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (!line) continue;
    const m = /^(\S+)(?:\s*=\s*|\s+)(.*)$/.exec(line);
    if (!m) continue;
    out.push({ key: m[1]!.toLowerCase(), args: m[2]!.trim().split(/\s+/) });
  }
  return out;
}

/** sshd's effective global value of `keyword` (lower-case), or undefined when unset. */
export function sshdValue(inp: Pick<PostureInputs, "sshdConfig" | "sshdIncludes">, keyword: string): string | undefined {
  const want = keyword.toLowerCase();
  let conditional = false;
  const visit = (text: string, depth: number): string | undefined => {
    for (const l of sshdLines(text)) {
      if (l.key === "match") {
        conditional = !(l.args.length === 1 && l.args[0]!.toLowerCase() === "all");
        continue;
      }
      if (l.key === "include" && depth < 8) {
        for (const pattern of l.args) {
          for (const [path, body] of inp.sshdIncludes) {
            if (!globMatch(pattern, path)) continue;
            const v = visit(body, depth + 1);
            if (v !== undefined) return v;
          }
        }
        continue;
      }
      if (!conditional && l.key === want) return l.args[0]?.toLowerCase();
    }
    return undefined;
  };
  return inp.sshdConfig === undefined ? undefined : visit(inp.sshdConfig, 0);
}

/** Shell-style glob (only * and ?), anchored; relative patterns are under /etc/ssh as in sshd. */
export function globMatch(pattern: string, path: string): boolean {
  const abs = pattern.startsWith("/") ? pattern : `/etc/ssh/${pattern}`;
  const re = abs.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]");
  return new RegExp(`^${re}$`).test(path);
}

// ---------------------------------------------------------------------------------------------
// apt: the last assignment of an APT::Periodic key wins (files read in name order).

export function aptValue(aptConf: ReadonlyMap<string, string>, key: string): string | undefined {
  let v: string | undefined;
  const re = new RegExp(`^\\s*${key.replace(/:/g, "\\:")}\\s+"([^"]*)"\\s*;`, "gm");
  for (const name of [...aptConf.keys()].sort()) {
    for (const m of aptConf.get(name)!.matchAll(re)) v = m[1];
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// nftables: find input base chains, and what each accept rule opens.

interface NftRule {
  chain: string;
  table: string;
  family: string;
  expr: unknown[];
}

interface InputChain {
  id: string;
  policy: string;
  rules: NftRule[];
}

/** What one accept rule lets in, as far as posture cares. */
export interface Opening {
  /** "tcp", "udp", or "any" when the rule has no protocol/port restriction. */
  proto: "tcp" | "udp" | "any";
  /** undefined: every port of `proto`. */
  ports: number[] | undefined;
  /** The rule also matches a source address. */
  sourceRestricted: boolean;
  text: string;
}

/** Interfaces whose traffic does not come from the outside world. */
const INNER_IF = /^(lo|wg[\w.-]*|vmnet[\w*]*)$/;

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === "object" && v !== null && !Array.isArray(v);

function inputChains(ruleset: unknown): InputChain[] {
  const items = isObj(ruleset) && Array.isArray(ruleset.nftables) ? (ruleset.nftables as unknown[]) : [];
  const chains = new Map<string, InputChain>();
  const key = (f: unknown, t: unknown, c: unknown) => `${String(f)} ${String(t)} ${String(c)}`;
  for (const it of items) {
    if (!isObj(it) || !isObj(it.chain)) continue;
    const c = it.chain;
    if (c.hook !== "input" || (c.type ?? "filter") !== "filter") continue;
    chains.set(key(c.family, c.table, c.name), { id: key(c.family, c.table, c.name), policy: String(c.policy ?? "accept"), rules: [] });
  }
  for (const it of items) {
    if (!isObj(it) || !isObj(it.rule)) continue;
    const r = it.rule;
    const ch = chains.get(key(r.family, r.table, r.chain));
    if (ch && Array.isArray(r.expr)) ch.rules.push({ chain: String(r.chain), table: String(r.table), family: String(r.family), expr: r.expr });
  }
  return [...chains.values()];
}

function ports(right: unknown): number[] | undefined {
  if (typeof right === "number") return [right];
  if (isObj(right) && Array.isArray(right.set)) {
    const out: number[] = [];
    for (const e of right.set) {
      if (typeof e === "number") out.push(e);
      else if (isObj(e) && Array.isArray(e.range) && e.range.length === 2) {
        const [a, b] = e.range as [number, number];
        for (let p = a; p <= b && out.length < 70_000; p++) out.push(p);
      } else return undefined;
    }
    return out;
  }
  if (isObj(right) && Array.isArray(right.range) && right.range.length === 2) {
    const [a, b] = right.range as [number, number];
    const out: number[] = [];
    for (let p = a; p <= b; p++) out.push(p);
    return out;
  }
  return undefined;
}

/**
 * The opening an accept rule makes, or undefined when the rule does not accept new
 * connections from outside (loopback, established/related, ICMP, or it does not accept).
 */
export function openingOf(expr: readonly unknown[]): Opening | undefined {
  let accepts = false;
  let proto: Opening["proto"] = "any";
  let portList: number[] | undefined;
  let sourceRestricted = false;
  let harmless = false;
  const parts: string[] = [];
  for (const e of expr) {
    if (!isObj(e)) continue;
    if ("accept" in e) accepts = true;
    const m = isObj(e.match) ? e.match : undefined;
    if (!m) continue;
    const left = m.left;
    if (isObj(left) && isObj(left.ct) && left.ct.key === "state") {
      const states = Array.isArray(m.right) ? m.right : [m.right];
      if (!states.includes("new") && !states.includes("untracked")) harmless = true;
    } else if (isObj(left) && isObj(left.meta) && (left.meta.key === "iif" || left.meta.key === "iifname")) {
      // Loopback, the WireGuard mesh (authenticated peers only) and tenant bridges (VMs
      // talking to their gateway) are not "open to anyone"; any other interface is.
      if (typeof m.right === "string" && INNER_IF.test(m.right)) harmless = true;
    } else if (isObj(left) && isObj(left.meta) && left.meta.key === "l4proto") {
      const r = isObj(m.right) && Array.isArray(m.right.set) ? m.right.set : [m.right];
      if (r.every((x) => x === "icmp" || x === "ipv6-icmp" || x === 1 || x === 58)) harmless = true;
      else if (r.length === 1 && (r[0] === "tcp" || r[0] === "udp")) proto = r[0];
    } else if (isObj(left) && isObj(left.payload)) {
      const p = left.payload;
      if ((p.protocol === "tcp" || p.protocol === "udp") && p.field === "dport" && m.op !== "!=") {
        proto = p.protocol;
        portList = ports(m.right);
        parts.push(`${p.protocol} dport ${JSON.stringify(m.right)}`);
      } else if ((p.protocol === "ip" || p.protocol === "ip6") && p.field === "saddr" && m.op !== "!=") {
        sourceRestricted = true;
        parts.push(`${p.protocol} saddr`);
      } else if (p.protocol === "icmp" || p.protocol === "icmpv6") {
        harmless = true;
      }
    }
  }
  if (!accepts || harmless) return undefined;
  return { proto, ports: portList, sourceRestricted, text: parts.join(" ") || "everything" };
}

// ---------------------------------------------------------------------------------------------

function checkFirewall(inp: PostureInputs, pol: PosturePolicy): { firewall: PostureCheck; ssh: PostureCheck } {
  const fail = (detail: string) => ({
    firewall: { name: "firewall", ok: false, optional: false, detail },
    ssh: { name: "ssh-restricted", ok: false, optional: false, detail: "no drop-by-default input firewall restricts SSH" },
  });
  if (inp.nftRuleset === undefined) return fail("nftables ruleset unreadable");
  const drops = inputChains(inp.nftRuleset).filter((c) => c.policy === "drop");
  if (drops.length === 0) return fail("no input chain with policy drop (inbound is open)");
  // The host is as closed as its strictest drop-by-default chain: judge each, keep the best.
  let best: { firewall: PostureCheck; ssh: PostureCheck } | undefined;
  for (const c of drops) {
    const extra: string[] = [];
    const openSsh: string[] = [];
    for (const r of c.rules) {
      const o = openingOf(r.expr);
      if (!o) continue;
      if (o.proto === "any" || o.ports === undefined) {
        if (!o.sourceRestricted) extra.push(o.text === "everything" ? `${o.proto} everything` : o.text);
        continue;
      }
      const allowed = o.proto === "tcp" ? pol.tcp : pol.udp;
      const bad = o.ports.filter((p) => !allowed.includes(p) && !(o.proto === "tcp" && p === pol.sshPort));
      if (bad.length && !o.sourceRestricted) extra.push(`${o.proto} ${bad.slice(0, 5).join(",")}${bad.length > 5 ? ",…" : ""}`);
      if (o.proto === "tcp" && o.ports.includes(pol.sshPort) && !o.sourceRestricted) openSsh.push(o.text);
    }
    const fw: PostureCheck = extra.length
      ? { name: "firewall", ok: false, optional: false, detail: `${c.id}: also open to anyone: ${extra.join("; ")}` }
      : { name: "firewall", ok: true, optional: false, detail: `${c.id}: policy drop` };
    const ssh: PostureCheck = openSsh.length
      ? { name: "ssh-restricted", ok: false, optional: false, detail: `SSH open to any source (${openSsh.join("; ")})` }
      : { name: "ssh-restricted", ok: true, optional: false, detail: "SSH only from listed sources" };
    const score = Number(fw.ok) + Number(ssh.ok);
    if (!best || score > Number(best.firewall.ok) + Number(best.ssh.ok)) best = { firewall: fw, ssh };
  }
  return best!;
}

export function assessPosture(inp: PostureInputs, pol: PosturePolicy = DEFAULT_POLICY): Posture {
  const pw = sshdValue(inp, "PasswordAuthentication");
  const checks: PostureCheck[] = [];
  checks.push(
    inp.sshdConfig === undefined
      ? { name: "ssh-password-off", ok: true, optional: false, detail: "sshd not installed" }
      : { name: "ssh-password-off", ok: pw === "no", optional: false, detail: `PasswordAuthentication ${pw ?? "unset (default yes)"}` },
  );
  const fw = checkFirewall(inp, pol);
  checks.push(fw.ssh);
  const periodicUpdate = aptValue(inp.aptConf, "APT::Periodic::Update-Package-Lists");
  const periodicUu = aptValue(inp.aptConf, "APT::Periodic::Unattended-Upgrade");
  const uuOk = inp.unattendedUpgradesInstalled && periodicUpdate === "1" && periodicUu === "1";
  checks.push({
    name: "auto-updates",
    ok: uuOk,
    optional: false,
    detail: !inp.unattendedUpgradesInstalled
      ? "unattended-upgrades not installed"
      : `Update-Package-Lists ${periodicUpdate ?? "unset"}, Unattended-Upgrade ${periodicUu ?? "unset"}`,
  });
  checks.push(fw.firewall);
  checks.push({
    name: "fail2ban",
    ok: inp.fail2banInstalled,
    optional: true,
    detail: inp.fail2banInstalled ? "installed" : "not installed",
  });
  return { ok: checks.every((c) => c.ok || c.optional), checks };
}

/** "ok", or the failing required checks, e.g. "fail: firewall, auto-updates". */
export function postureSummary(p: { ok: boolean; checks: readonly PostureCheck[] } | undefined): string {
  if (!p || p.checks.length === 0) return "unknown";
  if (p.ok) return "ok";
  return `fail: ${p.checks.filter((c) => !c.ok && !c.optional).map((c) => c.name).join(", ")}`;
}
