// token create|list|revoke|rotate. Secrets are printed here and nowhere else,
// once, with a warning on stderr.
import type { Command } from "commander";
import { Token } from "../../sdk/index.js";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { parseDuration, parseRole, roleName } from "../parse.js";
import { tokenView } from "../views.js";

function printSecret(app: App, verb: string, token: Token | undefined, secret: string): void {
  if (app.structured) {
    app.printOne({ columns: [], toJSON: (x: { token: Token | undefined; secret: string }) => ({ token: x.token ? Token.toJSON(x.token) : undefined, secret: x.secret }) }, { token, secret });
  } else {
    const t = token;
    const about = t ? ` (id ${t.id}, user ${t.user}, role ${roleName(t.role)}, expires ${t.expiresAt ? t.expiresAt.toISOString() : "never"})` : "";
    app.io.stdout(`token/${t?.name ?? "?"} ${verb}${about}\n${secret}\n`);
  }
  app.note("warning: this secret is shown only now and cannot be retrieved again; store it safely.");
}

export function registerTokenCommands(program: Command, app: App): void {
  const token = program
    .command("token")
    .description("manage API tokens")
    .addHelpText(
      "after",
      "\nExamples:\n  noidctl token create --name ci --role user --expires 30d\n  noidctl token list\n  noidctl token rotate ci\n  noidctl token revoke ci",
    );

  token
    .command("create")
    .description("create a token (admins); prints its secret once")
    .requiredOption("--name <name>", "token name")
    .requiredOption("--role <role>", "admin, user or read-only")
    .option("--user <user>", "user the token acts as (default: the token name)")
    .option("--expires <duration>", "lifetime, e.g. 90m, 12h, 30d (default: never)")
    .addHelpText("after", examples("noidctl token create --name ci --role user --expires 30d", "noidctl token create --name viewer --role read-only --user alice -o json"))
    .action(async (o: { name: string; role: string; user?: string; expires?: string }) => {
      const res = await app.client().createToken({
        name: o.name,
        role: parseRole(o.role),
        ...(o.user ? { user: o.user } : {}),
        ...(o.expires ? { ttlSeconds: parseDuration(o.expires) } : {}),
      });
      printSecret(app, "created", res.token, res.secret);
    });

  token
    .command("list")
    .alias("ls")
    .description("list tokens (never their secrets)")
    .addHelpText("after", examples("noidctl token list", "noidctl token list -o wide"))
    .action(async () => {
      const tokens = await app.client().listTokens();
      app.printList(tokenView, [...tokens].sort((a, b) => a.name.localeCompare(b.name)));
    });

  token
    .command("revoke")
    .description("revoke a token by name")
    .addHelpText("after", examples("noidctl token revoke ci"))
    .argument("<name>", "token name")
    .action(async (name: string) => {
      await app.client().revokeToken(name);
      if (app.structured) app.printOne({ columns: [], toJSON: (x: { revoked: string }) => x }, { revoked: name });
      else app.io.stdout(`token/${name} revoked\n`);
    });

  token
    .command("rotate")
    .description("replace a token's secret; prints the new one once (the old one works for a short overlap)")
    .addHelpText("after", examples("noidctl token rotate ci"))
    .argument("<name>", "token name")
    .action(async (name: string) => {
      const res = await app.client().rotateToken(name);
      printSecret(app, "rotated", res.token, res.secret);
      const until = res.oldSecretExpiresAt;
      if (until) {
        const secs = Math.max(0, Math.round((until.getTime() - app.now().getTime()) / 1000));
        app.note(`the old secret keeps working until ${until.toISOString()} (${secs}s), then stops: switch clients over before then.`);
      }
    });
}
