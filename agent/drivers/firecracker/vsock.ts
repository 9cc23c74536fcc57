// exec through the VM's vsock. Firecracker exposes guest vsock ports on a host unix socket:
// connect, send "CONNECT <port>\n", and after its "OK <n>\n" the stream is the guest's
// (docs/vsock.md). What follows is our guest agent's protocol: one JSON request line
// {"argv": [...], "env": {...}}, one JSON reply line {"stdout","stderr","exitCode"}.
// env travels only inside the stream: never in argv, files or logs.
import { connect } from "node:net";
import { NoidError } from "../../../common/errors.js";
import type { ExecOptions, ExecResult } from "../driver.js";

/** The guest agent's vsock port. */
export const GUEST_AGENT_PORT = 52;

/** A command that outlives `timeoutMs` resolves with timedOut (the connection is dropped); transport failures reject. */
export function vsockExec(udsPath: string, argv: string[], opts: ExecOptions & { port?: number } = {}): Promise<ExecResult> {
  const port = opts.port ?? GUEST_AGENT_PORT;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  return new Promise<ExecResult>((resolve, reject) => {
    const sock = connect(udsPath);
    let buf = "";
    let connected = false;
    const fail = (why: string, cause?: unknown): void => {
      sock.destroy();
      reject(new NoidError("UNAVAILABLE", `exec over vsock ${udsPath} port ${port}: ${why}`, cause ? { cause } : {}));
    };
    const timer = setTimeout(() => {
      sock.destroy();
      resolve({ stdout: "", stderr: "", exitCode: -1, timedOut: true });
    }, timeoutMs);
    sock.setEncoding("utf8");
    sock.on("connect", () => sock.write(`CONNECT ${port}\n`));
    sock.on("data", (chunk: string) => {
      buf += chunk;
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (!connected) {
          if (!line.startsWith("OK ")) return fail(`handshake refused: ${JSON.stringify(line)}`);
          connected = true;
          sock.write(`${JSON.stringify({ argv, ...(opts.env ? { env: opts.env } : {}) })}\n`);
          continue;
        }
        clearTimeout(timer);
        sock.end();
        try {
          const r = JSON.parse(line) as Partial<ExecResult>;
          return resolve({ stdout: String(r.stdout ?? ""), stderr: String(r.stderr ?? ""), exitCode: Number(r.exitCode ?? -1) });
        } catch (e) {
          return fail("guest agent sent a malformed reply", e);
        }
      }
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      fail(e.message, e);
    });
    sock.on("close", () => {
      clearTimeout(timer);
      fail("connection closed before a reply");
    });
  });
}
