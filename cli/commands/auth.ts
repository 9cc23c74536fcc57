// auth setup (check a token with WhoAmI, then save it as a context), login
// (password + TOTP -> session token saved in the context) and whoami.
import type { Command } from "commander";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { withContext } from "../config.js";
import { fetchServerCa, normalizeFingerprint } from "../../sdk/index.js";
import { roleName, UsageError } from "../parse.js";
import { DEFAULT_SERVER, type Connection } from "../settings.js";
import { whoAmIView } from "../views.js";

const TOKEN = /^[0-9a-f]{64}$/;

/** Pure: which token auth setup uses, from --token or stdin; never echoes it in errors. */
export function pickToken(o: { token?: string; tokenStdin?: boolean }, stdin: string | undefined): string {
  if (o.token !== undefined && o.tokenStdin) throw new UsageError("give --token or --token-stdin, not both");
  const t = (o.tokenStdin ? stdin ?? "" : o.token ?? "").trim();
  if (t === "") throw new UsageError("a token is required: --token <token> or --token-stdin");
  if (!TOKEN.test(t)) throw new UsageError("the token must be 64 lower-case hex characters");
  return t;
}

/**
 * Pure: password and TOTP code for login. The password is never a flag (shell
 * history); it is the first line of stdin, and the TOTP code the second line
 * unless --totp gives it.
 */
export function loginSecrets(o: { totp?: string }, stdin: string): { password: string; totpCode: string } {
  const lines = stdin.split(/\r?\n/);
  const password = lines[0] ?? "";
  if (password === "") throw new UsageError("no password on standard input (first line)");
  const totpCode = (o.totp ?? lines[1] ?? "").trim();
  if (totpCode !== "" && !/^\d{6}$/.test(totpCode)) throw new UsageError("the TOTP code must be 6 digits");
  return { password, totpCode };
}

/** Password and TOTP code: asked on the terminal (no echo for the password), else read from stdin. */
export async function readLoginSecrets(app: Pick<App, "io">, o: { totp?: string }): Promise<{ password: string; totpCode: string }> {
  const ask = app.io.prompt;
  if (!ask) return loginSecrets(o, await app.io.readStdin());
  const password = await ask("Password: ", { echo: false });
  if (password === "") throw new UsageError("no password given");
  const code = o.totp ?? (await ask("TOTP code (Enter if none is enrolled): ", { echo: true }));
  return loginSecrets({ totp: code }, password);
}

/**
 * Pure: whether a fetched CA may be pinned. With --ca-fingerprint it must
 * match; without, a human must have said yes (trust on first use).
 */
export function pinDecision(fetched: string, expected: string | undefined, humanSaidYes: boolean | undefined): { pin: true } | { pin: false; why: string } {
  if (expected !== undefined) {
    const want = normalizeFingerprint(expected);
    if (!want) throw new UsageError("--ca-fingerprint must be sha256:<64 hex> (as printed by noidctl host join-token and the coordinator log)");
    return want === fetched
      ? { pin: true }
      : { pin: false, why: `the server's CA is ${fetched}, not the expected ${want}: refusing to trust it (wrong server, or someone in between)` };
  }
  if (humanSaidYes === undefined) {
    return { pin: false, why: `the server's CA is ${fetched}; verify it and pass --ca-fingerprint ${fetched} (or --ca-file) to trust it` };
  }
  return humanSaidYes ? { pin: true } : { pin: false, why: "CA not trusted; nothing saved" };
}

export function registerAuthCommands(program: Command, app: App): void {
  const auth = program
    .command("auth")
    .description("store credentials for a coordinator")
    .addHelpText("after", examples("noidctl auth setup --server localhost:7654 --insecure --token-stdin < token.txt"));

  auth
    .command("setup")
    .description("check a token against the coordinator and save it as a context (made current)")
    .option("--token <token>", "64-hex API token (prefer --token-stdin: flags end up in shell history)")
    .option("--token-stdin", "read the token from standard input")
    .option("--ca-fingerprint <sha256>", "pin the server's CA only if its fingerprint is this (non-interactive trust on first use)")
    .addHelpText(
      "after",
      `
The global --server, --context, --insecure and --ca-file choose what is saved
(context "default" unless --context names another). Without --ca-file or
--insecure, the coordinator's CA is fetched over TLS and pinned in the
context: on a terminal after you confirm its fingerprint, otherwise only if
it matches --ca-fingerprint. Every later command verifies the server against
the pinned CA.

Examples:
  noidctl auth setup --server noid.example.com:7654 --ca-fingerprint sha256:3f... --token-stdin < token.txt
  noidctl auth setup --server noid.example.com:7654 --ca-file ca.pem --token-stdin < token.txt
  noidctl auth setup --context local --server unix:/run/noid/api.sock --insecure --token <token>`,
    )
    .action(async (o: { token?: string; tokenStdin?: boolean; caFingerprint?: string }) => {
      const token = pickToken(o, o.tokenStdin ? await app.io.readStdin() : undefined);
      const cfg = app.config();
      const flags = app.flags;
      const name = flags.context ?? cfg.current_context ?? "default";
      const existing = cfg.contexts[name];
      const caFile = flags.caFile ? app.absolute(flags.caFile) : existing?.ca_file;
      const server = app.env["NOID_SERVER"] || flags.server || existing?.server || DEFAULT_SERVER;
      const insecure = flags.insecure === true || (flags.caFile === undefined && o.caFingerprint === undefined && existing?.insecure === true);
      // The pinned CA: kept when the context already pins one for this server, else fetched and checked.
      let pinned = !insecure && !caFile && o.caFingerprint === undefined && existing?.server === server && existing.ca_pem ? { pem: existing.ca_pem, fingerprint: existing.ca_fingerprint ?? "" } : undefined;
      if (!insecure && !caFile && !pinned) {
        const ca = await fetchServerCa(server);
        let yes: boolean | undefined;
        if (o.caFingerprint === undefined && app.io.confirm) {
          yes = await app.io.confirm(`The coordinator at ${server} presents the CA\n  ${ca.subject}\n  ${ca.fingerprint}\nTrust it for this context? [y/N] `);
        }
        const d = pinDecision(ca.fingerprint, o.caFingerprint, yes);
        if (!d.pin) throw new UsageError(d.why);
        pinned = { pem: ca.pem, fingerprint: ca.fingerprint };
      }
      const conn: Connection = {
        server,
        token,
        insecure,
        ...(caFile ? { caFile } : pinned ? { caPem: pinned.pem } : {}),
      };
      const client = app.connectTo(conn);
      let me;
      try {
        me = await client.whoAmI();
      } finally {
        client.close();
      }
      app.saveConfig(
        withContext(cfg, name, {
          server: conn.server,
          token,
          ...(conn.insecure ? { insecure: true } : {}),
          ...(caFile ? { ca_file: caFile } : {}),
          ...(!caFile && pinned ? { ca_pem: pinned.pem, ca_fingerprint: pinned.fingerprint } : {}),
        }),
      );
      const trust = conn.insecure ? "plaintext (insecure)" : caFile ? `CA file ${caFile}` : `CA ${pinned!.fingerprint} pinned`;
      app.io.stdout(`context "${name}" saved and made current: ${me.user} (${roleName(me.role)}) at ${conn.server}; ${trust}\n`);
    });

  program
    .command("login")
    .description("log in with user name, password and TOTP code; saves the session token (12 h) in the context")
    .argument("<user>", "user name")
    .option("--totp <code>", "6-digit TOTP code (otherwise the second line of standard input)")
    .addHelpText(
      "after",
      `
The password is never a flag. On a terminal noidctl asks for it (nothing is
shown while typing) and then for the TOTP code unless --totp gives it; otherwise
it reads the password from the first line of standard input and the TOTP code
from the second.
The global --server, --context, --insecure and --ca-file choose the context.

Examples:
  noidctl login alice --totp 123456 < password.txt
  printf '%s\\n%s\\n' "$PW" "$CODE" | noidctl login admin --server noid.example.com:7654`,
    )
    .action(async (user: string, o: { totp?: string }) => {
      const { password, totpCode } = await readLoginSecrets(app, o);
      const cfg = app.config();
      const flags = app.flags;
      const name = flags.context ?? cfg.current_context ?? "default";
      const existing = cfg.contexts[name];
      const caFile = flags.caFile ? app.absolute(flags.caFile) : existing?.ca_file;
      const server = app.env["NOID_SERVER"] || flags.server || existing?.server || DEFAULT_SERVER;
      const caPem = !caFile && existing?.server === server ? existing.ca_pem : undefined;
      const conn: Connection = {
        server,
        insecure: flags.insecure === true || (flags.caFile === undefined && existing?.insecure === true),
        ...(caFile ? { caFile } : caPem ? { caPem } : {}),
      };
      const client = app.connectTo(conn);
      let res;
      try {
        res = await client.login({ user, password, totpCode });
      } finally {
        client.close();
      }
      app.saveConfig(
        withContext(cfg, name, {
          server: conn.server,
          token: res.token,
          ...(conn.insecure ? { insecure: true } : {}),
          ...(caFile ? { ca_file: caFile } : {}),
          ...(caPem ? { ca_pem: caPem, ...(existing?.ca_fingerprint ? { ca_fingerprint: existing.ca_fingerprint } : {}) } : {}),
        }),
      );
      const until = res.expiresAt ? ` until ${res.expiresAt.toISOString()}` : "";
      app.io.stdout(`logged in as ${user} (${roleName(res.role)})${until}; context "${name}" saved and made current\n`);
    });

  program
    .command("whoami")
    .description("show the user and role of the current token")
    .addHelpText("after", "\nExamples:\n  noidctl whoami\n  noidctl whoami --context prod -o json")
    .action(async () => app.printOne(whoAmIView, await app.client().whoAmI()));
}
