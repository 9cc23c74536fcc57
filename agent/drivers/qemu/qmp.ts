// A minimal QMP client: one connection per command (QEMU serves one QMP client per socket at
// a time, and a short-lived connection survives agent restarts without state). Each command:
// read the greeting, negotiate capabilities, execute, skip asynchronous events, return.
import { createConnection } from "node:net";
import { NoidError } from "../../../common/errors.js";

export interface QmpStatus {
  running: boolean;
  /** QEMU's run state: "running", "paused", "shutdown", "internal-error", ... */
  status: string;
}

type QmpMessage = { QMP?: unknown; return?: unknown; error?: { class: string; desc: string }; event?: string };

export async function qmpCommand(socketPath: string, command: string, args?: Record<string, unknown>, timeoutMs = 5_000): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(socketPath);
    let buf = "";
    let stage: "greeting" | "capabilities" | "command" = "greeting";
    let settled = false;
    const finish = (e: Error | undefined, v?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      if (e) reject(e);
      else resolve(v);
    };
    const timer = setTimeout(() => finish(new NoidError("DEADLINE_EXCEEDED", `QMP ${command} at ${socketPath}: no answer within ${timeoutMs} ms`)), timeoutMs);
    const send = (execute: string, a?: Record<string, unknown>): void => {
      sock.write(`${JSON.stringify(a ? { execute, arguments: a } : { execute })}\n`);
    };
    sock.setEncoding("utf8");
    sock.on("data", (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        let msg: QmpMessage;
        try {
          msg = JSON.parse(line) as QmpMessage;
        } catch {
          return finish(new NoidError("INTERNAL", `QMP ${command}: unparsable reply ${line.slice(0, 200)}`));
        }
        if (msg.event !== undefined) continue;
        if (msg.error) return finish(new NoidError("INTERNAL", `QMP ${command}: ${msg.error.class}: ${msg.error.desc}`));
        if (stage === "greeting" && msg.QMP !== undefined) {
          stage = "capabilities";
          send("qmp_capabilities");
        } else if (stage === "capabilities" && "return" in msg) {
          stage = "command";
          send(command, args);
        } else if (stage === "command" && "return" in msg) {
          return finish(undefined, msg.return);
        }
      }
    });
    sock.on("error", (e: NodeJS.ErrnoException) =>
      finish(new NoidError("UNAVAILABLE", `QMP ${command} at ${socketPath}: ${e.code ?? e.message}`, { cause: e })),
    );
    // `quit` closes the socket right after (or even before) answering: that is success.
    sock.on("close", () => (command === "quit" && stage === "command" ? finish(undefined, {}) : finish(new NoidError("UNAVAILABLE", `QMP ${command} at ${socketPath}: connection closed`))));
  });
}

export async function queryStatus(socketPath: string, timeoutMs?: number): Promise<QmpStatus> {
  const r = (await qmpCommand(socketPath, "query-status", undefined, timeoutMs)) as { running?: boolean; status?: string };
  return { running: r.running === true, status: r.status ?? "unknown" };
}
