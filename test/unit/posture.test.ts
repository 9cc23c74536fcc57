import { describe, expect, it } from "vitest";
import { aptValue, assessPosture, openingOf, postureSummary, sshdValue, type PostureInputs } from "../../agent/posture/posture.js";
import { planHardening, renderFirewall, type HardenOptions } from "../../deploy/harden.js";

const base = (over: Partial<PostureInputs> = {}): PostureInputs => ({
  sshdConfig: "PasswordAuthentication no\n",
  sshdIncludes: new Map(),
  aptConf: new Map([["20auto-upgrades", 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n']]),
  unattendedUpgradesInstalled: true,
  fail2banInstalled: false,
  nftRuleset: ruleset("drop", [
    [match("ct", "state", ["established", "related"]), { accept: null }],
    [match("payload-tcp", "dport", 22), match("payload-ip", "saddr", { prefix: { addr: "10.0.0.0", len: 8 } }), { accept: null }],
    [match("payload-tcp", "dport", { set: [7654] }), { accept: null }],
    [match("payload-udp", "dport", 51820), { accept: null }],
  ]),
  ...over,
});

function match(kind: string, key: string, right: unknown) {
  const left =
    kind === "ct" ? { ct: { key } } : kind === "meta" ? { meta: { key } } : { payload: { protocol: kind.split("-")[1], field: key } };
  return { match: { op: Array.isArray(right) ? "in" : "==", left, right } };
}

function ruleset(policy: string, rules: unknown[][]) {
  return {
    nftables: [
      { table: { family: "inet", name: "t" } },
      { chain: { family: "inet", table: "t", name: "input", type: "filter", hook: "input", prio: 0, policy } },
      ...rules.map((expr) => ({ rule: { family: "inet", table: "t", chain: "input", expr } })),
    ],
  };
}

const check = (p: ReturnType<typeof assessPosture>, name: string) => p.checks.find((c) => c.name === name)!;

describe("sshd effective settings", () => {
  it("takes the first value, splices Include in place and ignores Match blocks", () => {
    const inp = {
      sshdConfig: "Include /etc/ssh/sshd_config.d/*.conf\nPasswordAuthentication yes\n",
      sshdIncludes: new Map([["/etc/ssh/sshd_config.d/10-x.conf", "passwordauthentication   no # key only\n"]]),
    };
    expect(sshdValue(inp, "PasswordAuthentication")).toBe("no");
    expect(sshdValue({ sshdConfig: "PasswordAuthentication yes\nInclude sshd_config.d/*.conf\n", sshdIncludes: inp.sshdIncludes }, "passwordauthentication")).toBe("yes");
    expect(sshdValue({ sshdConfig: "Match User bob\n  PasswordAuthentication no\n", sshdIncludes: new Map() }, "PasswordAuthentication")).toBeUndefined();
    expect(sshdValue({ sshdConfig: "Match User bob\nX y\nMatch all\nPasswordAuthentication=no\n", sshdIncludes: new Map() }, "PasswordAuthentication")).toBe("no");
  });
  it("an unset PasswordAuthentication fails (sshd's default is yes)", () => {
    const p = assessPosture(base({ sshdConfig: "Port 22\n" }));
    expect(check(p, "ssh-password-off")).toMatchObject({ ok: false, detail: expect.stringContaining("default yes") });
    expect(p.ok).toBe(false);
  });
});

describe("apt periodic settings", () => {
  it("the last file in name order wins", () => {
    const conf = new Map([
      ["99override", 'APT::Periodic::Unattended-Upgrade "0";'],
      ["20auto-upgrades", 'APT::Periodic::Unattended-Upgrade "1";'],
    ]);
    expect(aptValue(conf, "APT::Periodic::Unattended-Upgrade")).toBe("0");
    expect(check(assessPosture(base({ aptConf: conf })), "auto-updates").ok).toBe(false);
  });
  it("requires the package, not only the setting", () => {
    expect(check(assessPosture(base({ unattendedUpgradesInstalled: false })), "auto-updates")).toMatchObject({ ok: false, detail: "unattended-upgrades not installed" });
  });
});

describe("firewall and SSH restriction", () => {
  it("a hardened ruleset passes every required check; fail2ban is optional", () => {
    const p = assessPosture(base());
    expect(p.checks.filter((c) => !c.ok).map((c) => c.name)).toEqual(["fail2ban"]);
    expect(p.ok).toBe(true);
    expect(postureSummary(p)).toBe("ok");
  });
  it("policy accept, no ruleset or an unreadable ruleset fail", () => {
    expect(check(assessPosture(base({ nftRuleset: ruleset("accept", []) })), "firewall").ok).toBe(false);
    expect(check(assessPosture(base({ nftRuleset: { nftables: [] } })), "firewall").ok).toBe(false);
    expect(check(assessPosture(base({ nftRuleset: undefined })), "firewall").detail).toMatch(/unreadable/);
  });
  it("an extra open port or an accept-everything rule fails the firewall check", () => {
    const extra = ruleset("drop", [[match("payload-tcp", "dport", { set: [7654, 8080] }), { accept: null }]]);
    expect(check(assessPosture(base({ nftRuleset: extra })), "firewall")).toMatchObject({ ok: false, detail: expect.stringContaining("tcp 8080") });
    const all = ruleset("drop", [[{ accept: null }]]);
    expect(check(assessPosture(base({ nftRuleset: all })), "firewall").ok).toBe(false);
    expect(postureSummary(assessPosture(base({ nftRuleset: all })))).toMatch(/^fail: .*firewall/);
  });
  it("SSH open to any source fails ssh-restricted", () => {
    const open = ruleset("drop", [[match("payload-tcp", "dport", 22), { accept: null }]]);
    expect(check(assessPosture(base({ nftRuleset: open })), "ssh-restricted").ok).toBe(false);
  });
  it("loopback, established, ICMP and mesh-interface rules open nothing to the outside", () => {
    expect(openingOf([match("meta", "iifname", "lo"), { accept: null }])).toBeUndefined();
    expect(openingOf([match("meta", "iifname", "wg-noid"), match("payload-udp", "dport", 4789), { accept: null }])).toBeUndefined();
    expect(openingOf([match("meta", "iifname", "eth0"), { accept: null }])).toMatchObject({ proto: "any" });
    expect(openingOf([match("ct", "state", ["new"]), { accept: null }])).toMatchObject({ proto: "any" });
    expect(openingOf([match("payload-tcp", "dport", 80), { drop: null }])).toBeUndefined();
  });
});

describe("hardening plan", () => {
  const o: HardenOptions = {
    root: "/tmp/never-used",
    sshFrom: ["192.0.2.0/24", "2001:db8::/32"],
    sshPort: 22,
    coordinator: true,
    coordinatorPort: 7654,
    wgPort: 51820,
    wgInterface: "wg-noid",
    tcp: [],
    udp: [],
    fail2ban: false,
  };
  it("renders SSH per address family and only the allowed ports", () => {
    const fw = renderFirewall(o);
    expect(fw).toContain("tcp dport 22 ip saddr { 192.0.2.0/24 } accept");
    expect(fw).toContain("tcp dport 22 ip6 saddr { 2001:db8::/32 } accept");
    expect(fw).toContain("tcp dport { 7654 } accept");
    expect(fw).toContain("policy drop");
    expect(fw).toMatch(/comment "noid-harden [0-9a-f]{16}"/);
    expect(renderFirewall({ ...o, coordinator: false })).not.toContain("7654");
  });
  it("outside / it never installs packages; without sshd it only warns", () => {
    const acts = planHardening(o, { files: new Map(), unattendedInstalled: false, fail2banInstalled: false, loadedTable: undefined });
    expect(acts.some((a) => a.kind === "run")).toBe(false);
    expect(acts.filter((a) => a.kind === "warn").map((a) => (a as { message: string }).message).join("\n")).toMatch(/sshd is not installed[\s\S]*unattended-upgrades/);
  });
});
