// Host side of the guest agent over QEMU's virtio-serial chardev (a unix socket). Requests
// to one guest go one after another over a connection kept between them (see Line); frames
// carry a random request id, and frames of an earlier request (one the host gave up on) are
// skipped.
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
 * Runs an idempotent request up to `tries` times while it fails for want of an answer
 * (DEADLINE_EXCEEDED, UNAVAILABLE), each after the first on a fresh connection (a request
 * that timed out closes its own). Any other error, or the last try's, is thrown.
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
  /** `idleMs`: how long a connection to this guest stays open without requests (see Line). */
  constructor(
    private readonly socketPath: string,
    private readonly idleMs = IDLE_MS,
  ) {}

  /**
   * Overwrites the guest kernel's virtio-serial receive buffers, which keep the bytes of
   * earlier requests (an exec's environment: secrets) until reused: pings carrying zeros
   * cycle through all of them (the ring has 128 pages; how QEMU chunks the stream into them
   * varies, so 4 MiB in 4 pings, which takes well under a second). Run before a checkpoint.
   *
   * A ping that gets no answer is sent again on a fresh connection, up to `tries` times
   * (`timeoutMs` shared between them; pings are idempotent). The scrub stalls seen in
   * migrations were the guest agent losing its framing (see Line); this is the guard left.
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

  /**
   * Sends one request and feeds its frames to `onFrame` until it returns true. Requests to
   * one guest go one after another (the guest serves one at a time) over a connection kept
   * open between them; `timeoutMs` counts from the call, the wait for earlier ones included.
   */
  private request(frame: Buffer, id: number, timeoutMs: number, onFrame: (f: Frame) => boolean): Promise<void> {
    const line = lineTo(this.socketPath, this.idleMs);
    return new Promise((resolve, reject) => {
      let settled = false;
      let conn: Connection | undefined;
      const finish = (e?: NoidError): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (e) reject(e);
        else resolve();
      };
      const timer = setTimeout(() => {
        finish(new NoidError("DEADLINE_EXCEEDED", `guest agent at ${this.socketPath} did not answer within ${timeoutMs} ms`));
        // The guest may hold part of this request, or answer it later: the next one starts afresh.
        conn?.close();
      }, timeoutMs);
      line.pending++;
      line.queue = line.queue
        .then(async () => {
          if (settled) return;
          try {
            conn = await line.connection();
          } catch (e) {
            return finish(e as NoidError);
          }
          if (settled) return;
          await conn.send(frame, id, onFrame).then(() => finish(), (e: NoidError) => finish(e));
        })
        .finally(() => line.done());
    });
  }
}

/**
 * Connections are kept, not opened per request: the guest learns of a host connecting or
 * leaving from control messages handled apart from the data, so a close followed at once by
 * a new connection could reach it after that connection's first bytes and cut its frame;
 * the guest agent then lost its framing (for hours with the rest of a 1 MiB scrub ping: a
 * migration's scrub failed all three tries, about once in 30 save-and-continue rounds in a
 * loop; none in 250 with kept connections). A connection closes after a request timed out
 * (to start the next one at a frame boundary) and after IDLE_MS without requests (QEMU
 * serves one client at a time: another process's connection waits until then).
 */
const IDLE_MS = 2_000;
const lines = new Map<string, Line>();

function lineTo(path: string, idleMs: number): Line {
  let l = lines.get(path);
  if (!l) {
    l = new Line(path, idleMs);
    lines.set(path, l);
  }
  return l;
}

class Line {
  /** Requests in order: each runs once the one before settled. */
  queue: Promise<void> = Promise.resolve();
  /** Requests queued or running. */
  pending = 0;
  private conn: Promise<Connection> | undefined;

  constructor(
    private readonly path: string,
    private readonly idleMs: number,
  ) {}

  /** The open connection, or a new one. */
  connection(): Promise<Connection> {
    if (!this.conn) {
      const c = Connection.open(this.path, this.idleMs, () => {
        if (this.conn === c) this.conn = undefined;
        this.forgetIfUnused();
      });
      this.conn = c;
      c.catch(() => {
        if (this.conn === c) this.conn = undefined;
      });
    }
    return this.conn;
  }

  /** A request settled. */
  done(): void {
    this.pending--;
    this.forgetIfUnused();
  }

  private forgetIfUnused(): void {
    if (this.pending === 0 && !this.conn && lines.get(this.path) === this) lines.delete(this.path);
  }
}

class Connection {
  private readonly reader = new FrameReader();
  private waiter: { id: number; onFrame: (f: Frame) => boolean; done: (e?: NoidError) => void } | undefined;
  private idle: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(
    private readonly sock: Socket,
    private readonly path: string,
    private readonly idleMs: number,
    private readonly onClosed: () => void,
  ) {
    sock.on("data", (chunk: Buffer) => {
      try {
        for (const f of this.reader.push(chunk)) {
          // Frames of an earlier request (one that timed out) are skipped.
          const w = this.waiter;
          if (w && f.id === w.id && w.onFrame(f)) {
            this.waiter = undefined;
            this.armIdle();
            w.done();
          }
        }
      } catch (e) {
        this.close(e instanceof NoidError ? e : new NoidError("INTERNAL", String(e)));
      }
    });
    sock.on("error", (e: NodeJS.ErrnoException) => this.close(new NoidError("UNAVAILABLE", `guest agent at ${path}: ${e.code ?? e.message}`, { cause: e })));
    sock.on("close", () => this.close(new NoidError("UNAVAILABLE", `guest agent at ${path}: connection closed`)));
  }

  static open(path: string, idleMs: number, onClosed: () => void): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const sock = createConnection(path);
      const fail = (e: NodeJS.ErrnoException): void => {
        reject(new NoidError("UNAVAILABLE", `guest agent at ${path}: ${e.code ?? e.message}`, { cause: e }));
      };
      sock.once("error", fail);
      sock.once("connect", () => {
        sock.off("error", fail);
        // An idle connection does not keep the process alive (a request's own timer does).
        sock.unref();
        resolve(new Connection(sock, path, idleMs, onClosed));
      });
    });
  }

  /** Writes one request; resolves when `onFrame` has seen the last of its frames. */
  send(frame: Buffer, id: number, onFrame: (f: Frame) => boolean): Promise<void> {
    if (this.closed) return Promise.reject(new NoidError("UNAVAILABLE", `guest agent at ${this.path}: connection closed`));
    clearTimeout(this.idle);
    return new Promise((resolve, reject) => {
      this.waiter = { id, onFrame, done: (e) => (e ? reject(e) : resolve()) };
      this.sock.write(frame);
    });
  }

  close(e: NoidError = new NoidError("UNAVAILABLE", `guest agent at ${this.path}: connection closed`)): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.idle);
    this.sock.destroy();
    this.onClosed();
    const w = this.waiter;
    this.waiter = undefined;
    w?.done(e);
  }

  private armIdle(): void {
    clearTimeout(this.idle);
    this.idle = setTimeout(() => this.close(), this.idleMs);
    this.idle.unref();
  }
}
