// user create|list|delete|rotate-password|enroll-totp|confirm-totp. Passwords
// come from stdin (never flags: they end up in shell history) or are
// generated; generated ones and TOTP secrets are printed once.
import { randomBytes } from "node:crypto";
import type { Command } from "commander";
import { Role, User } from "../../sdk/index.js";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { parseRole, roleName, UsageError } from "../parse.js";
import type { View } from "../render.js";
import { age } from "../views.js";

export const userView: View<User> = {
  toJSON: (u) => User.toJSON(u),
  columns: [
    { header: "NAME", value: (u) => u.name },
    { header: "ROLE", value: (u) => roleName(u.role) },
    { header: "2FA", value: (u) => (u.totpEnabled ? "totp" : "-") },
    { header: "PASSWORD AGE", value: (u, now) => age(u.passwordChangedAt, now) },
    { header: "AGE", value: (u, now) => age(u.createdAt, now), wide: true },
  ],
};

/** Pure: the first line of stdin as a password; a trailing newline is not part of it. */
export function passwordFromStdin(stdin: string, what = "password"): string {
  const line = stdin.split(/\r?\n/)[0] ?? "";
  if (line === "") throw new UsageError(`no ${what} on standard input`);
  return line;
}

function printOnce(app: App, label: string, value: string, data: Record<string, string>): void {
  if (app.structured) app.printOne({ columns: [], toJSON: (x: Record<string, string>) => x }, data);
  else app.io.stdout(`${label}\n${value}\n`);
  app.note("warning: this is shown only now and cannot be retrieved again; hand it over safely.");
}

export function registerUserCommands(program: Command, app: App): void {
  const user = program
    .command("user")
    .description("manage users who log in with a password and TOTP (admins; self-service for your own password and 2FA)")
    .addHelpText(
      "after",
      examples(
        "noidctl user create alice --role user --password-stdin < pw.txt",
        "noidctl user list",
        "noidctl user enroll-totp alice && noidctl user confirm-totp alice --code 123456",
        "noidctl user rotate-password admin",
        "noidctl user delete alice",
      ),
    );

  user
    .command("create")
    .description("create a user; without --password-stdin a password is generated and printed once")
    .argument("<name>", "user name")
    .requiredOption("--role <role>", "admin, user or read-only")
    .option("--password-stdin", "read the password (first line) from standard input")
    .addHelpText("after", examples("noidctl user create alice --role user --password-stdin < pw.txt", "noidctl user create ops --role admin"))
    .action(async (name: string, o: { role: string; passwordStdin?: boolean }) => {
      const role = parseRole(o.role);
      const generated = o.passwordStdin ? undefined : randomBytes(18).toString("base64url");
      const password = generated ?? passwordFromStdin(await app.io.readStdin());
      const u = await app.client().createUser({ name, role, password });
      if (generated) printOnce(app, `user/${u.name} created (${roleName(u.role)}); password:`, generated, { user: u.name, password: generated });
      else app.printResult(`user/${u.name} created (${roleName(u.role)})`, userView, u);
      if (u.role === Role.ROLE_ADMIN) app.note(`admins must enroll TOTP before they can log in: noidctl user enroll-totp ${u.name}`);
    });

  user
    .command("list")
    .alias("ls")
    .description("list users (never passwords or secrets)")
    .addHelpText("after", examples("noidctl user list", "noidctl user list -o json"))
    .action(async () => app.printList(userView, await app.client().listUsers()));

  user
    .command("delete")
    .alias("rm")
    .description("delete a user, their SSH keys and their sessions")
    .argument("<name>", "user name")
    .addHelpText("after", examples("noidctl user delete alice"))
    .action(async (name: string) => {
      await app.client().deleteUser(name);
      app.printResult(`user/${name} deleted`, { columns: [], toJSON: (x: { deleted: string }) => x }, { deleted: name });
    });

  user
    .command("rotate-password")
    .description("replace a password with a generated one (printed once) and end that user's sessions")
    .argument("[name]", "user name (default: yourself)")
    .addHelpText("after", examples("noidctl user rotate-password", "noidctl user rotate-password admin -o json"))
    .action(async (name: string | undefined) => {
      const pw = await app.client().rotatePassword(name);
      printOnce(app, `password of ${name ?? "your user"} rotated; sessions ended. New password:`, pw, { user: name ?? "", password: pw });
    });

  user
    .command("enroll-totp")
    .description("start TOTP enrollment: prints the otpauth:// URI and secret once; then confirm-totp with a code")
    .argument("[name]", "user name (default: yourself)")
    .addHelpText("after", examples("noidctl user enroll-totp", "noidctl user enroll-totp alice"))
    .action(async (name: string | undefined) => {
      const r = await app.client().enrollTotp(name);
      if (app.structured) app.printOne({ columns: [], toJSON: (x: { uri: string; secret: string }) => x }, { uri: r.uri, secret: r.secret });
      else app.io.stdout(`add this to your authenticator app (QR code of the URI, or the secret by hand):\n${r.uri}\n${r.secret}\n`);
      app.note(`then confirm: noidctl user confirm-totp ${name ?? ""}${name ? " " : ""}--code <6 digits>`);
    });

  user
    .command("confirm-totp")
    .description("finish TOTP enrollment with a code from the authenticator; from then on login needs a code")
    .argument("[name]", "user name (default: yourself)")
    .requiredOption("--code <digits>", "the code the authenticator shows now")
    .addHelpText("after", examples("noidctl user confirm-totp --code 123456", "noidctl user confirm-totp alice --code 123456"))
    .action(async (name: string | undefined, o: { code: string }) => {
      await app.client().confirmTotp(o.code, name);
      app.io.stdout(`TOTP enabled for ${name ?? "your user"}\n`);
    });
}
