// context list|use: the saved coordinators in config.toml (tokens never shown).
import type { Command } from "commander";
import type { App } from "../app.js";
import { examples } from "../help.js";
import { UsageError } from "../parse.js";
import { contextView, type ContextRow } from "../views.js";

export function registerContextCommands(program: Command, app: App): void {
  const ctx = program
    .command("context")
    .description("list and switch saved contexts")
    .addHelpText("after", "\nExamples:\n  noidctl context list\n  noidctl context use prod");

  ctx
    .command("list")
    .alias("ls")
    .description("list contexts; * marks the current one")
    .addHelpText("after", examples("noidctl context list", "noidctl context list -o json"))
    .action(() => {
      const cfg = app.config();
      const rows: ContextRow[] = Object.entries(cfg.contexts)
        .sort(([a], [b]) => a.localeCompare(b))
        .map(([name, c]) => ({
          name,
          current: name === cfg.current_context,
          server: c.server,
          insecure: c.insecure === true,
          caFile: c.ca_file ?? "",
          ...(c.ca_pem && c.ca_fingerprint ? { caFingerprint: c.ca_fingerprint } : {}),
          hasToken: Boolean(c.token),
        }));
      app.printList(contextView, rows);
    });

  ctx
    .command("use")
    .description("make a context current")
    .addHelpText("after", examples("noidctl context use prod"))
    .argument("<name>", "context name")
    .action((name: string) => {
      const cfg = app.config();
      if (!cfg.contexts[name]) {
        const known = Object.keys(cfg.contexts);
        throw new UsageError(`context "${name}" not found${known.length ? ` (have: ${known.join(", ")})` : ""}`);
      }
      app.saveConfig({ ...cfg, current_context: name });
      app.io.stdout(`switched to context "${name}"\n`);
    });
}
