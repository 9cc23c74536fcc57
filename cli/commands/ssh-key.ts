// ssh-key add|list|remove: a user's SSH public keys, handed to the VMs they create.
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { SshKey } from "../../sdk/index.js";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { UsageError } from "../parse.js";
import type { View } from "../render.js";
import { age } from "../views.js";

export const sshKeyView: View<SshKey> = {
  toJSON: (k) => SshKey.toJSON(k),
  columns: [
    { header: "FINGERPRINT", value: (k) => k.fingerprint },
    { header: "TYPE", value: (k) => k.type },
    { header: "COMMENT", value: (k) => k.comment || "-" },
    { header: "AGE", value: (k, now) => age(k.addedAt, now) },
    { header: "KEY", value: (k) => k.publicKey, wide: true },
  ],
};

/** Pure: the key line from a file's (or stdin's) text: the first non-empty, non-comment line. */
export function keyLine(text: string, source: string): string {
  const line = text.split(/\r?\n/).map((l) => l.trim()).find((l) => l !== "" && !l.startsWith("#"));
  if (!line) throw new UsageError(`no public key in ${source}`);
  return line;
}

export function registerSshKeyCommands(program: Command, app: App): void {
  const key = program
    .command("ssh-key")
    .description("manage your SSH public keys (handed to the VMs you create)")
    .addHelpText("after", examples("noidctl ssh-key add ~/.ssh/id_ed25519.pub", "noidctl ssh-key list", "noidctl ssh-key remove SHA256:abc..."));

  key
    .command("add")
    .description("add a public key from a .pub file, or '-' for standard input")
    .argument("<file>", "path of the public key file, or -")
    .option("--user <user>", "add to this user's keys (admins)")
    .addHelpText("after", examples("noidctl ssh-key add ~/.ssh/id_ed25519.pub", "cat key.pub | noidctl ssh-key add - --user alice"))
    .action(async (file: string, o: { user?: string }) => {
      let text: string;
      if (file === "-") text = await app.io.readStdin();
      else {
        try {
          text = readFileSync(app.absolute(file), "utf8");
        } catch (e) {
          throw new UsageError(`cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
      }
      const k = await app.client().addSshKey(keyLine(text, file === "-" ? "standard input" : file), o.user ? { user: o.user } : {});
      app.printResult(`ssh-key ${k.fingerprint} (${k.type}${k.comment ? `, ${k.comment}` : ""}) added`, sshKeyView, k);
    });

  key
    .command("list")
    .alias("ls")
    .description("list SSH keys")
    .option("--user <user>", "this user's keys (admins)")
    .addHelpText("after", examples("noidctl ssh-key list", "noidctl ssh-key list --user alice -o wide"))
    .action(async (o: { user?: string }) => app.printList(sshKeyView, await app.client().listSshKeys(o.user ? { user: o.user } : {})));

  key
    .command("remove")
    .alias("rm")
    .description("remove an SSH key by fingerprint")
    .argument("<fingerprint>", "SHA256:... as ssh-key list shows it")
    .option("--user <user>", "from this user's keys (admins)")
    .addHelpText("after", examples("noidctl ssh-key remove SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"))
    .action(async (fp: string, o: { user?: string }) => {
      await app.client().removeSshKey(fp, o.user ? { user: o.user } : {});
      app.printResult(`ssh-key ${fp} removed`, { columns: [], toJSON: (x: { removed: string }) => x }, { removed: fp });
    });
}
