// Byte streams the coordinator opens on the session (see AgentStreamOpen): a VM's serial
// console (both ways), a VM's console log (tail, then follow), and this agent's own recent
// log lines. Each ends with one `end` output, with the error and its status code when it
// failed (the driver lacks the capability, the VM is not here or not running).
import type { Logger } from "pino";
import { AgentStreamKind, type AgentStreamInput, type AgentStreamOpen, type AgentStreamOutput } from "../gen/noid/v1/agent.js";
import { NoidError } from "../common/errors.js";
import type { ConsoleStream, HypervisorDriver } from "./drivers/driver.js";
import { TAIL_WINDOW, fileSize, readFrom, tailStart } from "./log-tail.js";

const CHUNK = 64 * 1024;
const FOLLOW_POLL_MS = 200;

interface Open {
  console?: ConsoleStream;
  timer?: NodeJS.Timeout;
  closed: boolean;
  /** Console input that arrived before the console was attached. */
  pending: Buffer[];
}

export interface StreamRunnerOptions {
  driverFor: (vmId: string) => Promise<HypervisorDriver | undefined>;
  /** The agent's recent log lines (LogRing.lines). */
  hostLogs: (tail: number) => string[];
  logger: Logger;
}

export class StreamRunner {
  private readonly open = new Map<string, Open>();

  constructor(private readonly o: StreamRunnerOptions) {}

  run(cmd: AgentStreamOpen, send: (o: AgentStreamOutput) => void): void {
    const id = cmd.streamId;
    const st: Open = { closed: false, pending: [] };
    this.open.set(id, st);
    const data = (b: Buffer) => {
      for (let i = 0; i < b.length; i += CHUNK) if (!st.closed) send({ streamId: id, data: b.subarray(i, i + CHUNK), end: false, error: "", errorCode: "" });
    };
    const end = (e?: unknown) => {
      if (st.closed) return;
      st.closed = true;
      this.release(id);
      const code = e instanceof NoidError ? e.code : e ? "INTERNAL" : "";
      send({ streamId: id, data: Buffer.alloc(0), end: true, error: e ? (e instanceof Error ? e.message : String(e)) : "", errorCode: code });
    };
    void (async () => {
      try {
        if (cmd.kind === AgentStreamKind.AGENT_STREAM_KIND_HOST_LOGS) {
          const lines = this.o.hostLogs(cmd.tail);
          data(Buffer.from(lines.length ? `${lines.join("\n")}\n` : ""));
          return end();
        }
        const driver = await this.o.driverFor(cmd.vmId);
        if (!driver) throw new NoidError("NOT_FOUND", `VM ${cmd.vmId} is not on this host`);
        if (cmd.kind === AgentStreamKind.AGENT_STREAM_KIND_CONSOLE) {
          if (!driver.capabilities().console || !driver.console) throw new NoidError("FAILED_PRECONDITION", `driver ${driver.name} does not support console`);
          const vm = await driver.inspect(cmd.vmId);
          if (!vm || (vm.state !== "running" && vm.state !== "paused")) throw new NoidError("FAILED_PRECONDITION", `VM ${cmd.vmId} is not running on this host`);
          const con = await driver.console(cmd.vmId);
          if (st.closed) return con.close();
          st.console = con;
          this.o.logger.info({ streamId: id, vmId: cmd.vmId }, "console attached");
          con.onData(data);
          con.onClose((err) => {
            this.o.logger.info({ streamId: id, vmId: cmd.vmId }, "console detached");
            end(err);
          });
          for (const b of st.pending.splice(0)) con.write(b);
          return;
        }
        if (cmd.kind === AgentStreamKind.AGENT_STREAM_KIND_VM_LOGS) {
          if (!driver.capabilities().logs || !driver.logPath) throw new NoidError("FAILED_PRECONDITION", `driver ${driver.name} does not support logs`);
          const path = await driver.logPath(cmd.vmId);
          const size = fileSize(path);
          const from = Math.max(0, size - (cmd.tail > 0 ? TAIL_WINDOW : Number.MAX_SAFE_INTEGER));
          const head = readFrom(path, from, size - from);
          data(head.subarray(tailStart(head, cmd.tail)));
          if (!cmd.follow) return end();
          let offset = from + head.length;
          const poll = () => {
            if (st.closed) return;
            const now = fileSize(path);
            // A restarted VM starts a new log: follow it from its beginning.
            if (now < offset) offset = 0;
            while (!st.closed && now > offset) {
              const b = readFrom(path, offset, Math.min(1 << 20, now - offset));
              if (b.length === 0) break;
              offset += b.length;
              data(b);
            }
            st.timer = setTimeout(poll, FOLLOW_POLL_MS);
          };
          st.timer = setTimeout(poll, FOLLOW_POLL_MS);
          return;
        }
        throw new NoidError("INVALID_ARGUMENT", `unknown stream kind ${cmd.kind}`);
      } catch (e) {
        end(e);
      }
    })();
  }

  /** Console input, or the client closing the stream. */
  input(i: AgentStreamInput): void {
    const st = this.open.get(i.streamId);
    if (!st) return;
    const k = i.kind;
    if (k?.$case === "data") {
      if (st.console) st.console.write(Buffer.from(k.value));
      else if (st.pending.length < 1024) st.pending.push(Buffer.from(k.value));
    } else if (k?.$case === "close") this.cancel(i.streamId);
  }

  /** The client went away: stop without sending anything more. */
  cancel(streamId: string): void {
    const st = this.open.get(streamId);
    if (!st) return;
    st.closed = true;
    this.release(streamId);
  }

  private release(streamId: string): void {
    const st = this.open.get(streamId);
    if (!st) return;
    this.open.delete(streamId);
    if (st.timer) clearTimeout(st.timer);
    st.console?.close();
  }
}
