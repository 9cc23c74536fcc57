// Runs the commands the coordinator sends (exec) in this host's VMs through
// their driver, and sends back output and the exit code. Environment values
// are handed to the driver only; nothing here logs or stores them.
import type { Logger } from "pino";
import type { AgentExecCommand, AgentExecOutput } from "../gen/noid/v1/agent.js";
import type { DriverSet } from "./drivers/driver-set.js";

export class ExecRunner {
  private readonly running = new Set<string>();
  private readonly cancelled = new Set<string>();

  constructor(
    private readonly drivers: DriverSet,
    private readonly logger: Logger,
  ) {}

  run(cmd: AgentExecCommand, send: (o: AgentExecOutput) => void): void {
    const { execId } = cmd;
    this.running.add(execId);
    const out = (o: Omit<AgentExecOutput, "execId">) => {
      if (!this.cancelled.has(execId)) send({ execId, ...o });
    };
    void (async () => {
      try {
        const found = await this.drivers.find(cmd.vmId);
        if (!found || found.vm.state !== "running") throw new Error(`VM ${cmd.vmId} is not running on this host`);
        const { driver } = found;
        if (!driver.capabilities().exec || !driver.exec) throw new Error(`driver ${driver.name} does not support exec`);
        this.logger.info({ execId, vmId: cmd.vmId, driver: driver.name, command: cmd.argv[0], envNames: Object.keys(cmd.env) }, "exec");
        const r = await driver.exec(cmd.vmId, cmd.argv, { env: cmd.env, timeoutMs: cmd.timeoutSeconds * 1000 });
        if (r.stdout) out({ output: { kind: { $case: "stdout", value: Buffer.from(r.stdout) } }, error: "" });
        if (r.stderr) out({ output: { kind: { $case: "stderr", value: Buffer.from(r.stderr) } }, error: "" });
        out({ output: { kind: { $case: "exit", value: { exitCode: r.exitCode, signal: "", timedOut: r.timedOut ?? false } } }, error: "" });
      } catch (e) {
        out({ output: undefined, error: e instanceof Error ? e.message : String(e) });
      } finally {
        this.running.delete(execId);
        this.cancelled.delete(execId);
      }
    })();
  }

  /** The client went away: drop its output (the command itself runs to its timeout). */
  cancel(execId: string): void {
    if (this.running.has(execId)) this.cancelled.add(execId);
  }
}
