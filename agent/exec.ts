// Runs the commands the coordinator sends (exec) in this host's VMs through their driver:
// output streamed back as it comes, stdin and signals forwarded, the timeout enforced here
// (TERM, then KILL 2 s later; exit code 124 and timed_out). Environment values are handed to
// the driver only; nothing here logs or stores them. Drivers without streaming get their
// batch exec() (no stdin, output at the end).
import type { Logger } from "pino";
import type { AgentExecCommand, AgentExecInput, AgentExecOutput } from "../gen/noid/v1/agent.js";
import { EXEC_SIGNALS, type ExecProcess, type ExecSignal, type HypervisorDriver } from "./drivers/driver.js";

/** Grace between TERM and KILL when a command overstays its timeout. */
const KILL_GRACE_MS = 2000;
export const TIMEOUT_EXIT_CODE = 124;

interface Running {
  proc?: ExecProcess;
  cancelled: boolean;
  /** Input that arrived before the process started. */
  pending: AgentExecInput[];
}

export class ExecRunner {
  private readonly running = new Map<string, Running>();

  constructor(
    /** The driver that runs a VM (several drivers may run on one host). */
    private readonly driverFor: (vmId: string) => Promise<HypervisorDriver | undefined>,
    private readonly logger: Logger,
  ) {}

  run(cmd: AgentExecCommand, send: (o: AgentExecOutput) => void): void {
    const { execId } = cmd;
    const state: Running = { cancelled: false, pending: [] };
    this.running.set(execId, state);
    const out = (o: Omit<AgentExecOutput, "execId">) => {
      if (!state.cancelled) send({ execId, ...o });
    };
    const exit = (exitCode: number, signal: string, timedOut: boolean) =>
      out({ output: { kind: { $case: "exit", value: { exitCode, signal, timedOut } } }, error: "" });
    void (async () => {
      try {
        const driver = await this.driverFor(cmd.vmId);
        if (!driver) throw new Error(`VM ${cmd.vmId} is not on this host`);
        if (!driver.capabilities().exec || (!driver.exec && !driver.execStream)) throw new Error(`driver ${driver.name} does not support exec`);
        const vm = await driver.inspect(cmd.vmId);
        if (!vm || vm.state !== "running") throw new Error(`VM ${cmd.vmId} is not running on this host`);
        this.logger.info({ execId, vmId: cmd.vmId, command: cmd.argv[0], envNames: Object.keys(cmd.env), stdin: cmd.stdin }, "exec");
        const timeoutMs = cmd.timeoutSeconds * 1000;
        if (!driver.execStream) {
          if (cmd.stdin) throw new Error(`driver ${driver.name} cannot forward stdin`);
          const r = await driver.exec!(cmd.vmId, cmd.argv, { env: cmd.env, ...(timeoutMs ? { timeoutMs } : {}) });
          if (r.stdout) out({ output: { kind: { $case: "stdout", value: Buffer.from(r.stdout) } }, error: "" });
          if (r.stderr) out({ output: { kind: { $case: "stderr", value: Buffer.from(r.stderr) } }, error: "" });
          exit(r.timedOut ? TIMEOUT_EXIT_CODE : r.exitCode, "", r.timedOut ?? false);
          return;
        }
        const proc = await driver.execStream(cmd.vmId, cmd.argv, { env: cmd.env, stdin: cmd.stdin });
        state.proc = proc;
        proc.onStdout((b) => out({ output: { kind: { $case: "stdout", value: b } }, error: "" }));
        proc.onStderr((b) => out({ output: { kind: { $case: "stderr", value: b } }, error: "" }));
        for (const i of state.pending.splice(0)) this.apply(state, i);
        if (state.cancelled) proc.kill("KILL");
        let timedOut = false;
        let killer: NodeJS.Timeout | undefined;
        const timer = timeoutMs
          ? setTimeout(() => {
              timedOut = true;
              proc.kill("TERM");
              killer = setTimeout(() => proc.kill("KILL"), KILL_GRACE_MS);
            }, timeoutMs)
          : undefined;
        const r = await proc.exited;
        if (timer) clearTimeout(timer);
        if (killer) clearTimeout(killer);
        exit(timedOut ? TIMEOUT_EXIT_CODE : r.exitCode, r.signal, timedOut);
      } catch (e) {
        out({ output: undefined, error: e instanceof Error ? e.message : String(e) });
      } finally {
        this.running.delete(execId);
      }
    })();
  }

  /** stdin or a signal from the client. */
  input(i: AgentExecInput): void {
    const state = this.running.get(i.execId);
    if (!state) return;
    if (!state.proc) state.pending.push(i);
    else this.apply(state, i);
  }

  private apply(state: Running, i: AgentExecInput): void {
    const p = state.proc!;
    const k = i.kind;
    if (k?.$case === "stdin") p.write(Buffer.from(k.value));
    else if (k?.$case === "stdinEof") p.endStdin();
    else if (k?.$case === "signal" && (EXEC_SIGNALS as readonly string[]).includes(k.value)) p.kill(k.value as ExecSignal);
  }

  /** The client went away: kill the command and drop its output. */
  cancel(execId: string): void {
    const state = this.running.get(execId);
    if (!state) return;
    state.cancelled = true;
    state.proc?.kill("KILL");
  }
}
