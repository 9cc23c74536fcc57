// Lifecycle beyond start/stop: pause, resume, restart; the serial console; logs of a VM or
// (admins) of a host's agent.
import type { Command } from "commander";
import type { App } from "../app.js";
import { UsageError } from "../parse.js";
import { registerVmActions } from "./vm.js";

/** Ctrl-] detaches from a console, as telnet's escape. */
export const DETACH_BYTE = 0x1d;

/** Pure: the bytes to send before a detach key, and whether the chunk held one. */
export function splitDetach(chunk: Buffer): { send: Buffer; detach: boolean } {
  const i = chunk.indexOf(DETACH_BYTE);
  return i < 0 ? { send: chunk, detach: false } : { send: chunk.subarray(0, i), detach: true };
}

/** Pure: --tail as a line count (0 = everything). */
export function parseTail(v: string | undefined): number {
  if (v === undefined) return 0;
  if (!/^\d{1,6}$/.test(v)) throw new UsageError(`--tail expects a number of lines (got "${v}")`);
  return Number(v);
}

export function registerLifecycleCommands(program: Command, app: App): void {
  registerVmActions(program, app, [
    ["pause", "freeze a running VM in memory (its driver must support pause)", "pauseVm", "pausing"],
    ["resume", "continue a paused VM", "resumeVm", "resuming"],
    ["restart", "stop a running or paused VM and start it again (same host, disk and address)", "restartVm", "restarting"],
  ]);

  program
    .command("console")
    .description("attach to a VM's serial console (read and write); Ctrl-] detaches")
    .argument("<name>", "VM name")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
Everything typed goes to the VM's serial port; Ctrl-] (or the end of stdin) detaches and
leaves the VM running. Drivers without a serial console (sandbox, firecracker) answer
FAILED_PRECONDITION. Attaching is recorded in the audit log; what is typed is not.

Examples:
  noidctl console web`,
    )
    .action(async (name: string, o: { owner?: string }) => {
      const session = app.client().console(name, (b) => app.io.stdout(b.toString("utf8")), o.owner ? { owner: o.owner } : {});
      app.note(`attached to the console of vm/${name}; Ctrl-] detaches`);
      app.io.rawMode?.(true);
      const unregister = app.io.onInterrupt?.(() => session.write(Buffer.from([0x03])));
      const pump = (async () => {
        const input = app.io.stdinStream;
        if (input) {
          for await (const chunk of input) {
            const { send, detach } = splitDetach(typeof chunk === "string" ? Buffer.from(chunk) : chunk);
            if (send.length) session.write(send);
            if (detach) break;
          }
        }
        session.close();
      })();
      pump.catch(() => undefined);
      try {
        await session.closed;
      } finally {
        app.io.rawMode?.(false);
        unregister?.();
      }
      app.note(`\ndetached from vm/${name}`);
    });

  program
    .command("logs")
    .description("a VM's console log (QEMU serial output, sandbox init output), or with --host a host agent's recent logs (admins)")
    .argument("[name]", "VM name")
    .option("--host <host>", "the agent logs of this host (admins)")
    .option("--tail <n>", "only the last n lines")
    .option("-f, --follow", "keep printing what the VM writes (VM logs)")
    .option("--owner <user>", "another user's VM (admins)")
    .addHelpText(
      "after",
      `
Host logs are the agent's last lines (pino JSON, secrets redacted), kept in its memory.

Examples:
  noidctl logs web --tail 50
  noidctl logs web -f
  noidctl logs --host hv-1 --tail 100`,
    )
    .action(async (name: string | undefined, o: { host?: string; tail?: string; follow?: boolean; owner?: string }) => {
      const tail = parseTail(o.tail);
      if (o.host !== undefined) {
        if (name !== undefined) throw new UsageError("give a VM name or --host, not both");
        if (o.follow) throw new UsageError("--follow is for VM logs");
        const lines = await app.client().hostLogs(o.host, { tail });
        for (const l of lines) app.io.stdout(`${l}\n`);
        return;
      }
      if (name === undefined) throw new UsageError("give a VM name, or --host for a host's agent logs");
      const ac = new AbortController();
      const unregister = o.follow ? app.io.onInterrupt?.(() => ac.abort()) : undefined;
      try {
        for await (const chunk of app.client().vmLogs(name, { tail, follow: o.follow ?? false, signal: ac.signal, ...(o.owner ? { owner: o.owner } : {}) })) {
          app.io.stdout(chunk.toString("utf8"));
        }
      } finally {
        unregister?.();
      }
    });
}
