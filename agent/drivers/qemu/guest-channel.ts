// Host side of the guest agent: one unix-socket connection (QEMU's virtio-serial chardev)
// per request. QEMU accepts one client at a time and queues the next, so concurrent callers
// simply wait their turn. Frames carry a random request id; frames of an earlier request
// (one the host gave up on) are skipped.
import { randomInt } from "node:crypto";
import { createConnection, type Socket } from "node:net";
import { NoidError } from "../../../common/errors.js";
import type { ExecResult } from "../driver.js";
import { type Frame, FrameReader, decodeResult, encodeExec, encodeFrame } from "./frames.js";

/** Output kept per stream; the rest is dropped so a chatty command cannot exhaust the agent. */
const MAX_OUTPUT = 16 << 20;
const DEFAULT_EXEC_TIMEOUT_MS = 30_000;
/** Host-side slack over the guest's own timeout: the guest kills the command and reports first. */
const HOST_GRACE_MS = 5_000;

/**
 * Runs an idempotent request up to `tries` times, each on a connection of its own (every
 * GuestChannel request opens one), while it fails for want of an answer (DEADLINE_EXCEEDED,
 * UNAVAILABLE): a guest that missed QEMU's "host connected" event holds its reply until the
 * host connects again. Any other error, or the last try's, is thrown.
 */
export async function onFreshConnections<T>(tries: number, request: () => Promise<T>): Promise<T> {
  for (let t = 1; ; t++) {
    try {
      return await request();
    } catch (e) {
      if (t >= tries || !(e instanceof NoidError) || (e.code !== "DEADLINE_EXCEEDED" && e.code !== "UNAVAILABLE")) throw e;
    }
  }
}

export class GuestChannel {
  constructor(private readonly socketPath: string) {}

  /**
   * Overwrites the guest kernel's virtio-serial receive buffers, which keep the bytes of
   * earlier requests (an exec's environment: secrets) until reused: pings carrying zeros
   * cycle through all of them (the ring has 128 pages; how QEMU chunks the stream into them
   * varies, so 4 MiB in 4 pings, which takes well under a second). Run before a checkpoint.
   *
   * A ping that gets no answer is sent again on a fresh connection, up to `tries` times
   * (`timeoutMs` shared between them): pings are idempotent, and a guest that missed
   * QEMU's "host connected" event holds its reply until the host connects again. Twice in
   * about ten full test runs the first migration of a VM booted minutes before waited out
   * its scrub's whole 30 s on one connection (cause not pinned down; that a fresh
   * connection helps is a guess that has not been contradicted since).
   */
  async scrub(rounds = 4, bytes = 1 << 20, timeoutMs = 30_000, tries = 3): Promise<void> {
    for (let i = 0; i < rounds; i++) {
      await onFreshConnections(tries, () => {
        const id = randomInt(1, 2 ** 31);
        return this.request(encodeFrame("P", id, Buffer.alloc(bytes)), id, Math.ceil(timeoutMs / tries), (f) => f.type === "P");
      });
    }
  }

  /** Resolves with the agent's version once it answers; rejects (UNAVAILABLE) otherwise. */
  async ping(timeoutMs = 2_000): Promise<string> {
    const id = randomInt(1, 2 ** 31);
    let version = "";
    await this.request(encodeFrame("P", id), id, timeoutMs, (f) => {
      version = f.payload.toString("utf8");
      return f.type === "P";
    });
    return version;
  }

  async exec(argv: readonly string[], env: Record<string, string> = {}, timeoutMs = DEFAULT_EXEC_TIMEOUT_MS): Promise<ExecResult> {
    const id = randomInt(1, 2 ** 31);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outLen = 0;
    let errLen = 0;
    let result = { exitCode: -1, timedOut: false };
    await this.request(encodeFrame("X", id, encodeExec(argv, env, timeoutMs)), id, timeoutMs + HOST_GRACE_MS, (f) => {
      if (f.type === "O" && outLen < MAX_OUTPUT) {
        out.push(f.payload);
        outLen += f.payload.length;
      } else if (f.type === "E" && errLen < MAX_OUTPUT) {
        err.push(f.payload);
        errLen += f.payload.length;
      } else if (f.type === "R") {
        result = decodeResult(f.payload);
        return true;
      }
      return false;
    });
    return {
      stdout: Buffer.concat(out).toString("utf8"),
      stderr: Buffer.concat(err).toString("utf8"),
      exitCode: result.exitCode,
      ...(result.timedOut ? { timedOut: true } : {}),
    };
  }

  /** Asks the guest to sync and power off; resolves once it acknowledged. */
  async shutdown(timeoutMs = 2_000): Promise<void> {
    const id = randomInt(1, 2 ** 31);
    await this.request(encodeFrame("S", id), id, timeoutMs, (f) => f.type === "S");
  }

  /** Sends one request and feeds its frames to `onFrame` until it returns true. */
  private request(frame: Buffer, id: number, timeoutMs: number, onFrame: (f: Frame) => boolean): Promise<void> {
    return new Promise((resolve, reject) => {
      const reader = new FrameReader();
      let sock: Socket | undefined;
      let settled = false;
      const finish = (e?: NoidError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        sock?.destroy();
        if (e) reject(e);
        else resolve();
      };
      const timer = setTimeout(
        () => finish(new NoidError("DEADLINE_EXCEEDED", `guest agent at ${this.socketPath} did not answer within ${timeoutMs} ms`)),
        timeoutMs,
      );
      sock = createConnection(this.socketPath);
      sock.on("connect", () => sock?.write(frame));
      sock.on("data", (chunk: Buffer) => {
        try {
          for (const f of reader.push(chunk)) {
            if (f.id === id && onFrame(f)) return finish();
          }
        } catch (e) {
          finish(e instanceof NoidError ? e : new NoidError("INTERNAL", String(e)));
        }
      });
      sock.on("error", (e: NodeJS.ErrnoException) =>
        finish(new NoidError("UNAVAILABLE", `guest agent at ${this.socketPath}: ${e.code ?? e.message}`, { cause: e })),
      );
      sock.on("close", () => finish(new NoidError("UNAVAILABLE", `guest agent at ${this.socketPath}: connection closed`)));
    });
  }
}
