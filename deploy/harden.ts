// Hardens a hypervisor host for Noid, idempotently: observe -> plan (pure) -> apply -> check
// the posture the agent will report (agent/posture). A second run changes nothing.
//
//   sudo node dist/deploy/harden.js --ssh-from 192.0.2.0/24 [--coordinator] [--fail2ban] [--dry-run]
//
// What it does:
//   sshd      key-only login (drop-in sshd_config.d/10-noid-hardening.conf, Include added when missing)
//   updates   unattended-upgrades installed (apt-get, only when --root is /) and enabled by APT::Periodic
//   fail2ban  installed when --fail2ban (optional)
//   firewall  table inet noid_host: inbound policy drop; established/related, loopback, ICMP,
//             SSH only from --ssh-from, the coordinator's port (--coordinator), WireGuard's UDP
//             port, VXLAN only inside the mesh interface, DHCP from tenant bridges, extra --tcp/--udp.
//             Kept in /etc/noid/host-firewall.nft, included from /etc/nftables.conf, loaded now.
// It never flushes the whole ruleset: the agent's own tables (guards, egress) are left alone.
import { MIGRATION_PORT } from "../agent/migration/transfer.js";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";
import { Command, CommanderError } from "commander";
import ipaddr from "ipaddr.js";
import { observePosture } from "../agent/posture/observe.js";
import { type Posture, type PosturePolicy, assessPosture } from "../agent/posture/posture.js";
import { type Runner, run as realRun } from "../common/run.js";

export interface HardenOptions {
  root: string;
  sshFrom: string[];
  sshPort: number;
  coordinator: boolean;
  coordinatorPort: number;
  wgPort: number;
  wgInterface: string;
  tcp: number[];
  udp: number[];
  fail2ban: boolean;
  /** Load the firewall into this netns (tests); default: the current one, only when root is "/". */
  netns?: string;
}

export type HardenAction =
  | { kind: "write"; path: string; content: string; mode: number; why: string }
  | { kind: "run"; argv: string[]; why: string; netns?: string }
  | { kind: "warn"; message: string };

export const SSHD_DROPIN = "/etc/ssh/sshd_config.d/10-noid-hardening.conf";
export const APT_PERIODIC = "/etc/apt/apt.conf.d/20auto-upgrades";
export const FIREWALL_FILE = "/etc/noid/host-firewall.nft";
export const NFTABLES_CONF = "/etc/nftables.conf";
export const FIREWALL_TABLE = "noid_host";

const SSHD_BODY = `# Written by noid harden (deploy/harden.ts): key-only SSH.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
`;

const APT_BODY = `// Written by noid harden (deploy/harden.ts): daily lists and security upgrades.
APT::Periodic::Update-Package-Lists "1";
APT::Periodic::Unattended-Upgrade "1";
`;

export function policyOf(o: HardenOptions): PosturePolicy {
  return {
    sshPort: o.sshPort,
    tcp: [...(o.coordinator ? [o.coordinatorPort] : []), ...o.tcp],
    udp: [o.wgPort, ...o.udp],
  };
}

export function renderFirewall(o: HardenOptions): string {
  const v4 = o.sshFrom.filter((c) => ipaddr.parseCIDR(c)[0].kind() === "ipv4");
  const v6 = o.sshFrom.filter((c) => ipaddr.parseCIDR(c)[0].kind() === "ipv6");
  const pol = policyOf(o);
  const lines = [
    `# Written by noid harden (deploy/harden.ts); rerun it instead of editing.`,
    `table inet ${FIREWALL_TABLE} {}`,
    `delete table inet ${FIREWALL_TABLE}`,
    `table inet ${FIREWALL_TABLE} {`,
    `  comment "noid-harden HASH"`,
    `  chain input {`,
    `    type filter hook input priority filter; policy drop;`,
    `    ct state established,related accept`,
    `    ct state invalid drop`,
    `    iif lo accept`,
    `    meta l4proto { icmp, ipv6-icmp } accept`,
    ...(v4.length ? [`    tcp dport ${o.sshPort} ip saddr { ${v4.join(", ")} } accept`] : []),
    ...(v6.length ? [`    tcp dport ${o.sshPort} ip6 saddr { ${v6.join(", ")} } accept`] : []),
    ...(pol.tcp.length ? [`    tcp dport { ${pol.tcp.join(", ")} } accept`] : []),
    `    udp dport { ${pol.udp.join(", ")} } accept`,
    `    iifname "${o.wgInterface}" udp dport 4789 accept`,
    // VM migrations: the source agent serves the VM's state to the target on its mesh address.
    `    iifname "${o.wgInterface}" tcp dport ${MIGRATION_PORT} accept`,
    `    iifname "vmnet*" udp dport 67 accept`,
    `  }`,
    `}`,
    ``,
  ];
  const text = lines.join("\n");
  return text.replace("noid-harden HASH", `noid-harden ${contentHash(text)}`);
}

export interface HardenObserved {
  files: ReadonlyMap<string, string | undefined>;
  unattendedInstalled: boolean;
  fail2banInstalled: boolean;
  /** The firewall table as loaded now (`nft list table`), undefined when absent. */
  loadedTable: string | undefined;
}

export const WATCHED_FILES = ["/etc/ssh/sshd_config", SSHD_DROPIN, APT_PERIODIC, FIREWALL_FILE, NFTABLES_CONF] as const;

/** Pure: what must change. Empty when the host already matches. */
export function planHardening(o: HardenOptions, obs: HardenObserved): HardenAction[] {
  const out: HardenAction[] = [];
  const file = (p: string) => obs.files.get(p);
  const write = (path: string, content: string, why: string, mode = 0o644) => {
    if (file(path) !== content) out.push({ kind: "write", path, content, mode, why });
  };
  const onRealRoot = o.root === "/";

  const sshd = file("/etc/ssh/sshd_config");
  if (sshd === undefined) {
    out.push({ kind: "warn", message: "sshd is not installed (/etc/ssh/sshd_config absent): nothing to harden there" });
  } else {
    write(SSHD_DROPIN, SSHD_BODY, "key-only SSH");
    if (!/^\s*Include\s+\S*sshd_config\.d\/\*\.conf/im.test(sshd)) {
      write("/etc/ssh/sshd_config", `Include /etc/ssh/sshd_config.d/*.conf\n${sshd}`, "make sshd read its drop-in directory first");
    }
    if (onRealRoot) out.push({ kind: "run", argv: ["sh", "-c", "sshd -t && (systemctl reload ssh || systemctl reload sshd || true)"], why: "reload sshd after checking its config" });
  }

  const pkgs = [
    ...(obs.unattendedInstalled ? [] : ["unattended-upgrades"]),
    ...(o.fail2ban && !obs.fail2banInstalled ? ["fail2ban"] : []),
  ];
  if (pkgs.length) {
    if (onRealRoot) out.push({ kind: "run", argv: ["apt-get", "install", "-y", "-q", ...pkgs], why: `install ${pkgs.join(", ")}` });
    else out.push({ kind: "warn", message: `not installed under ${o.root}: ${pkgs.join(", ")} (packages are only installed when --root is /)` });
  }
  write(APT_PERIODIC, APT_BODY, "enable daily security upgrades");

  const fw = renderFirewall(o);
  write(FIREWALL_FILE, fw, "inbound firewall, default drop");
  const conf = file(NFTABLES_CONF);
  const include = `include "${FIREWALL_FILE}"`;
  if (conf === undefined) write(NFTABLES_CONF, `#!/usr/sbin/nft -f\n${include}\n`, "load the host firewall at boot", 0o755);
  else if (!conf.includes(include)) write(NFTABLES_CONF, `${conf.trimEnd()}\n${include}\n`, "load the host firewall at boot", 0o755);
  if (onRealRoot || o.netns) {
    // Loaded when what is loaded differs from the file (or nothing is loaded).
    if (obs.loadedTable === undefined || file(FIREWALL_FILE) !== fw || !sameTable(obs.loadedTable, fw)) {
      out.push({ kind: "run", argv: ["nft", "-f", join(o.root, FIREWALL_FILE)], why: "load the firewall now", ...(o.netns ? { netns: o.netns } : {}) });
    }
    if (onRealRoot && !o.netns) out.push({ kind: "run", argv: ["sh", "-c", "command -v systemctl >/dev/null && systemctl enable nftables >/dev/null 2>&1 || true"], why: "load nftables at boot" });
  }
  return out;
}

/** Rule lines of a table as nft prints it or as we render it (the chain header excluded). */
const ruleLines = (t: string): number =>
  t.split("\n").filter((l) => /\b(accept|drop)$/.test(l.trim()) && !l.includes("hook input")).length;

/**
 * Whether the loaded table is the one `file` describes: the table carries the hash of what was
 * loaded as its comment, and no rule was added or deleted by hand since.
 */
function sameTable(loaded: string, file: string): boolean {
  const m = /comment "noid-harden ([0-9a-f]+)"/.exec(loaded);
  return m?.[1] === contentHash(file) && ruleLines(loaded) === ruleLines(file);
}

export const contentHash = (text: string): string =>
  createHash("sha256").update(text.replace(/\n\s*comment "noid-harden [^"]*"/, "")).digest("hex").slice(0, 16);

export async function observeHardening(o: HardenOptions, runner: Runner): Promise<HardenObserved> {
  const files = new Map<string, string | undefined>();
  for (const p of WATCHED_FILES) {
    const f = join(o.root, p);
    files.set(p, existsSync(f) ? readFileSync(f, "utf8") : undefined);
  }
  const nsOpt = o.netns ? { netns: o.netns } : {};
  const t = await runner(["nft", "list", "table", "inet", FIREWALL_TABLE], { allowFail: true, ...nsOpt });
  return {
    files,
    unattendedInstalled: ["/usr/bin/unattended-upgrade", "/usr/bin/unattended-upgrades"].some((p) => existsSync(join(o.root, p))),
    fail2banInstalled: existsSync(join(o.root, "/usr/bin/fail2ban-server")),
    loadedTable: t.exitCode === 0 ? t.stdout : undefined,
  };
}

export function describe(a: HardenAction): string {
  switch (a.kind) {
    case "write":
      return `write ${a.path} (${a.why})`;
    case "run":
      return `run ${a.argv.join(" ")}${a.netns ? ` in netns ${a.netns}` : ""} (${a.why})`;
    case "warn":
      return `warning: ${a.message}`;
  }
}

export async function applyHardening(o: HardenOptions, actions: readonly HardenAction[], runner: Runner): Promise<void> {
  for (const a of actions) {
    if (a.kind === "write") {
      const p = join(o.root, a.path);
      mkdirSync(dirname(p), { recursive: true });
      writeFileSync(p, a.content, { mode: a.mode });
    } else if (a.kind === "run") {
      await runner(a.argv, { ...(a.netns ? { netns: a.netns } : {}), timeoutMs: 600_000 });
    }
  }
}

export interface HardenResult {
  actions: HardenAction[];
  posture: Posture;
}

/** Observe, plan, apply (unless dryRun), and judge the posture the agent will report. */
export async function harden(o: HardenOptions, opts: { dryRun: boolean; runner?: Runner }): Promise<HardenResult> {
  const runner = opts.runner ?? realRun;
  const actions = planHardening(o, await observeHardening(o, runner));
  if (!opts.dryRun) await applyHardening(o, actions, runner);
  const posture = assessPosture(await observePosture({ root: o.root, runner, ...(o.netns ? { netns: o.netns } : {}) }), policyOf(o));
  return { actions, posture };
}

const port = (v: string): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw new Error(`"${v}" is not a port (1-65535)`);
  return n;
};
const collect = <T>(f: (v: string) => T) => (v: string, acc: T[] = []) => [...acc, f(v)];
const cidr = (v: string): string => {
  if (!ipaddr.isValidCIDR(v)) throw new Error(`--ssh-from: "${v}" is not a CIDR (e.g. 192.0.2.0/24)`);
  return v;
};

export async function main(argv: string[]): Promise<number> {
  const p = new Command()
    .name("noid-harden")
    .description("Harden a hypervisor host for Noid (idempotent; --dry-run shows what would change)")
    .requiredOption("--ssh-from <cidr>", "networks allowed to reach SSH (repeatable)", collect(cidr))
    .option("--ssh-port <port>", "SSH port", port, 22)
    .option("--coordinator", "this host runs a coordinator: open its port")
    .option("--coordinator-port <port>", "coordinator port", port, 7654)
    .option("--wg-port <port>", "WireGuard UDP port", port, 51820)
    .option("--wg-interface <name>", "WireGuard interface (VXLAN is accepted only inside it)", "wg-noid")
    .option("--tcp <port>", "another TCP port to open (repeatable)", collect(port))
    .option("--udp <port>", "another UDP port to open (repeatable)", collect(port))
    .option("--fail2ban", "also install fail2ban")
    .option("--root <dir>", "filesystem root to harden (tests, images)", "/")
    .option("--netns <name>", "load the firewall into this network namespace")
    .option("--dry-run", "print what would change and change nothing")
    .exitOverride()
    .parse(argv, { from: "user" });
  const f = p.opts<{
    sshFrom: string[];
    sshPort: number;
    coordinator?: boolean;
    coordinatorPort: number;
    wgPort: number;
    wgInterface: string;
    tcp?: number[];
    udp?: number[];
    fail2ban?: boolean;
    root: string;
    netns?: string;
    dryRun?: boolean;
  }>();
  const o: HardenOptions = {
    root: f.root,
    sshFrom: f.sshFrom,
    sshPort: f.sshPort,
    coordinator: f.coordinator ?? false,
    coordinatorPort: f.coordinatorPort,
    wgPort: f.wgPort,
    wgInterface: f.wgInterface,
    tcp: f.tcp ?? [],
    udp: f.udp ?? [],
    fail2ban: f.fail2ban ?? false,
    ...(f.netns ? { netns: f.netns } : {}),
  };
  if (process.getuid?.() !== 0 && o.root === "/") throw new Error("run as root (or use --root DIR for a tree you own)");
  const { actions, posture } = await harden(o, { dryRun: f.dryRun ?? false });
  const changes = actions.filter((a) => a.kind !== "warn");
  for (const a of actions) process.stdout.write(`${f.dryRun && a.kind !== "warn" ? "would " : ""}${describe(a)}\n`);
  if (changes.length === 0) process.stdout.write("nothing to change\n");
  process.stdout.write(`posture${f.dryRun ? " (now, before changes)" : ""}:\n`);
  for (const c of posture.checks) process.stdout.write(`  ${c.ok ? "ok  " : c.optional ? "opt " : "FAIL"} ${c.name.padEnd(17)} ${c.detail}\n`);
  return f.dryRun || posture.ok ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: unknown) => {
      if (e instanceof CommanderError) process.exit(e.code === "commander.helpDisplayed" ? 0 : 2);
      process.stderr.write(`noid-harden: ${e instanceof Error ? e.message : String(e)}\n`);
      process.exit(1);
    },
  );
}
