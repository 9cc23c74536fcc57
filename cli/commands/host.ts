// Host commands: hosts, host get|usage|posture|cordon|uncordon|drain.
import type { Command } from "commander";
import { HostPosture, HostUsage } from "../../sdk/index.js";
import { hostView, postureSummary } from "../views.js";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { parseDuration } from "../parse.js";

export function registerHostCommands(program: Command, app: App): void {
  program
    .command("hosts")
    .description("list hypervisor hosts")
    .addHelpText("after", "\nExamples:\n  noidctl hosts\n  noidctl hosts -o wide")
    .action(async () => {
      const hosts = await app.client().listHosts();
      app.printList(hostView, [...hosts].sort((a, b) => a.name.localeCompare(b.name)));
    });

  const host = program
    .command("host")
    .description("inspect and steer one host")
    .addHelpText("after", "\nExamples:\n  noidctl host get hv-1\n  noidctl host cordon hv-1\n  noidctl host drain hv-1");

  host
    .command("get")
    .description("show one host")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host get hv-1", "noidctl host get hv-1 -o yaml"))
    .action(async (name: string) => app.printOne(hostView, await app.client().getHost(name)));

  host
    .command("usage")
    .description("show what a host's NAT, firewall and guards carried and stopped, as its agent last sent it (admins)")
    .argument("<name>", "host name")
    .addHelpText(
      "after",
      examples("noidctl host usage hv-1", "noidctl host usage hv-1 -o json") +
        "\nTraffic is per tenant network on the host: scope private (to its peers) or egress (out through the host's NAT).",
    )
    .action(async (name: string) => {
      const u = await app.client().getHostUsage(name);
      if (app.structured) {
        app.printOne({ columns: [], toJSON: () => (u ? HostUsage.toJSON(u) : null) }, u);
        return;
      }
      if (!u || u.samples.length === 0) {
        app.io.stdout(`host/${name}: no usage reported to this coordinator yet\n`);
        return;
      }
      const lines = [`host/${name} usage${u.sentAt ? ` (sent ${u.sentAt.toISOString()})` : ""}:`];
      const rows = u.samples
        .filter((s) => s.value > 0 || s.metric.startsWith("network_traffic"))
        .map((s) => [s.metric, Object.entries(s.labels).sort().map(([k, v]) => `${k}=${v}`).join(" "), String(s.value)]);
      const w0 = Math.max(6, ...rows.map((r) => r[0]!.length));
      const w1 = Math.max(6, ...rows.map((r) => r[1]!.length));
      lines.push(`  ${"METRIC".padEnd(w0)}  ${"LABELS".padEnd(w1)}  VALUE`);
      for (const r of rows) lines.push(`  ${r[0]!.padEnd(w0)}  ${r[1]!.padEnd(w1)}  ${r[2]}`);
      app.io.stdout(lines.join("\n") + "\n");
    });

  host
    .command("posture")
    .description("show a host's hardening checks, as its agent last reported them")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host posture hv-1", "noidctl host posture hv-1 -o json"))
    .action(async (name: string) => {
      const h = await app.client().getHost(name);
      const p = h.posture;
      if (app.structured) {
        app.printOne({ columns: [], toJSON: () => (p ? HostPosture.toJSON(p) : null) }, h);
        return;
      }
      if (!p || p.checks.length === 0) {
        app.io.stdout(`host/${name}: no posture reported yet\n`);
        return;
      }
      const lines = [`host/${name} posture: ${postureSummary(h)}${p.checkedAt ? ` (checked ${p.checkedAt.toISOString()})` : ""}`];
      for (const c of p.checks) lines.push(`  ${c.ok ? "ok  " : c.optional ? "opt " : "FAIL"} ${c.name.padEnd(17)} ${c.detail}`);
      if (!p.ok) lines.push("  fix: run deploy/harden.ts on the host (see README, Deploy)");
      app.io.stdout(lines.join("\n") + "\n");
    });

  host
    .command("cordon")
    .description("keep new VMs off a host")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host cordon hv-1"))
    .action(async (name: string) => {
      const h = await app.client().cordonHost(name);
      app.printResult(`host/${h.name} cordoned`, hostView, h);
    });

  host
    .command("uncordon")
    .description("let a host accept new VMs again")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host uncordon hv-1"))
    .action(async (name: string) => {
      const h = await app.client().uncordonHost(name);
      app.printResult(`host/${h.name} uncordoned`, hostView, h);
    });

  host
    .command("drain")
    .description("cordon a host and reschedule its unstarted VMs")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host drain hv-1", "noidctl host drain hv-1 -o json"))
    .action(async (name: string) => {
      const res = await app.client().drainHost(name);
      if (app.structured) {
        app.printOne(
          { columns: [], toJSON: (r: typeof res) => ({ host: r.host ? hostView.toJSON(r.host) : undefined, rescheduled: r.rescheduled, remaining: r.remaining }) },
          res,
        );
        return;
      }
      const lines = [`host/${name} drained`];
      lines.push(`  rescheduled: ${res.rescheduled.length ? res.rescheduled.join(", ") : "none"}`);
      lines.push(`  still running there: ${res.remaining.length ? res.remaining.join(", ") : "none"}`);
      app.io.stdout(lines.join("\n") + "\n");
    });

  host
    .command("join-token")
    .description("create a one-time token a new agent joins with (admin only)")
    .option("--ttl <duration>", "how long the token stays usable (e.g. 30m, 1h, 2d)", "1h")
    .option("--host <name>", "only this host name may join with it")
    .addHelpText(
      "after",
      `
The token is shown once. Put it in a file on the new host (mode 0600) and
start the agent with --join-token-file FILE --ca-fingerprint FP (or
--ca-file ca.crt); the agent exchanges it for a host certificate and
connects with mTLS from then on. The token works once, until it expires.

Examples:
  noidctl host join-token --ttl 1h
  noidctl host join-token --ttl 30m --host hv-7 -o json`,
    )
    .action(async (o: { ttl: string; host?: string }) => {
      const ttlSeconds = parseDuration(o.ttl);
      const res = await app.client().createJoinToken({ ttlSeconds, ...(o.host ? { hostName: o.host } : {}) });
      if (app.structured) {
        app.printOne(
          { columns: [], toJSON: (r: typeof res) => ({ token: r.token, expires_at: r.expiresAt?.toISOString(), ca_fingerprint: r.caFingerprint }) },
          res,
        );
        return;
      }
      app.io.stdout(`${res.token}\n`);
      app.note(`one-time join token${o.host ? ` for host ${o.host}` : ""}, valid until ${res.expiresAt?.toISOString()}; shown once`);
      app.note(`cluster CA: ${res.caFingerprint}  (noid-agent --ca-fingerprint ${res.caFingerprint})`);
    });

  host
    .command("remove")
    .description("forget a host (no VMs left on it) and revoke its certificates (admin only)")
    .argument("<name>", "host name")
    .addHelpText("after", examples("noidctl host remove hv-1"))
    .action(async (name: string) => {
      const res = await app.client().removeHost(name);
      if (app.structured) {
        app.printOne({ columns: [], toJSON: (r: typeof res) => ({ host: name, revoked_serials: r.revokedSerials }) }, res);
        return;
      }
      app.io.stdout(`host/${name} removed; ${res.revokedSerials.length} certificate(s) revoked\n`);
    });
}
