// noidctl exec: run a command in a VM; its output streams back and its exit
// code becomes noidctl's.
import type { Command } from "commander";
import type { App } from "../app.js";
import { UsageError } from "../parse.js";

const collect = (v: string, prev: string[]): string[] => [...prev, v];

/**
 * Pure: `-e KEY=VALUE` sets a value; `-e KEY` takes KEY from noidctl's own
 * environment, so a secret need not appear in the command line.
 */
export function execEnv(pairs: readonly string[], local: Readonly<Record<string, string | undefined>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const p of pairs) {
    const i = p.indexOf("=");
    const key = i < 0 ? p : p.slice(0, i);
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new UsageError(`-e expects KEY=VALUE or KEY (got "${p}")`);
    if (i >= 0) out[key] = p.slice(i + 1);
    else {
      const v = local[key];
      if (v === undefined) throw new UsageError(`-e ${key}: ${key} is not set in this environment`);
      out[key] = v;
    }
  }
  return out;
}

export function registerExecCommand(program: Command, app: App): void {
  program
    .command("exec")
    .description("run a command in a VM; exits with the command's exit code")
    .argument("<name>", "VM name")
    .argument("<command...>", "the command and its arguments (after --)")
    .option("-e, --env <KEY=VALUE|KEY>", "environment variable for the command (repeatable; KEY alone copies it from here)", collect, [])
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
The global --timeout (seconds) limits the command's run time (default 300).
Environment values are passed to the command only: never stored or logged.

Examples:
  noidctl exec web -- uname -a
  noidctl exec web -e API_KEY=secret123 -- ./app arg
  API_KEY=secret123 noidctl exec web -e API_KEY -- ./app     # the value stays out of the command line`,
    )
    .action(async (name: string, argv: string[], o: { env: string[]; owner?: string }) => {
      const env = execEnv(o.env, app.env);
      const t = app.flags.timeout;
      const r = await app.client().exec(name, argv, {
        env,
        ...(o.owner ? { owner: o.owner } : {}),
        ...(t !== undefined ? { timeoutSeconds: Math.ceil(Number(t)) } : {}),
        onStdout: (b) => app.io.stdout(b.toString("utf8")),
        onStderr: (b) => app.io.stderr(b.toString("utf8")),
      });
      if (r.timedOut) app.note(`error: the command timed out in VM ${name}`);
      app.exitCode = r.timedOut ? 124 : r.exitCode;
    });
}
