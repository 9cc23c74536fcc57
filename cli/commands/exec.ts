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
    .option("-i, --interactive", "send noidctl's stdin to the command")
    .addHelpText(
      "after",
      `
The global --timeout (seconds) limits the command's run time (default 300);
a command that overstays gets TERM, then KILL, and noidctl exits 124.
Ctrl-C sends INT to the command; a second Ctrl-C sends KILL.
Environment values are passed to the command only: never stored or logged.

Examples:
  noidctl exec web -- uname -a
  noidctl exec web -e API_KEY=secret123 -- ./app arg
  API_KEY=secret123 noidctl exec web -e API_KEY -- ./app     # the value stays out of the command line
  tar c ./site | noidctl exec -i web -- tar x -C /srv         # stdin streamed to the command`,
    )
    .action(async (name: string, argv: string[], o: { env: string[]; owner?: string; interactive?: boolean }) => {
      const env = execEnv(o.env, app.env);
      const t = app.flags.timeout;
      const session = app.client().spawn(name, argv, {
        env,
        ...(o.owner ? { owner: o.owner } : {}),
        ...(t !== undefined ? { timeoutSeconds: Math.ceil(Number(t)) } : {}),
        onStdout: (b) => app.io.stdout(b.toString("utf8")),
        onStderr: (b) => app.io.stderr(b.toString("utf8")),
        collect: false,
        stdin: o.interactive ?? false,
      });
      let interrupts = 0;
      const unregister = app.io.onInterrupt?.(() => {
        interrupts++;
        session.kill(interrupts === 1 ? "INT" : "KILL");
      });
      let pump: Promise<void> | undefined;
      if (o.interactive) {
        const input = app.io.stdinStream;
        pump = (async () => {
          if (input) for await (const chunk of input) session.write(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
          session.end();
        })();
        // The command may end before its input does (e.g. `head -1`): stop pumping then.
        pump.catch(() => undefined);
      }
      try {
        const r = await session.result;
        if (r.timedOut) app.note(`error: the command timed out in VM ${name}`);
        app.exitCode = r.timedOut ? 124 : r.exitCode;
      } finally {
        unregister?.();
      }
    });
}
