// The guest agent's wire format (guest-agent/noid-agent.c), pure: encode requests, split a
// byte stream into frames. Big-endian u32 length (of what follows), u8 type, u32 request id,
// payload. Binary rather than JSON so the C side needs no parser and output stays 8-bit clean.
import { NoidError } from "../../../common/errors.js";

export const MAX_FRAME = 4 << 20;

export type FrameType = "P" | "X" | "S" | "O" | "E" | "R";

export interface Frame {
  type: string;
  id: number;
  payload: Buffer;
}

export function encodeFrame(type: FrameType, id: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const hdr = Buffer.alloc(9);
  hdr.writeUInt32BE(payload.length + 5, 0);
  hdr.write(type, 4, "latin1");
  hdr.writeUInt32BE(id >>> 0, 5);
  return Buffer.concat([hdr, payload]);
}

const str = (s: string): Buffer => {
  const b = Buffer.from(s, "utf8");
  const n = Buffer.alloc(4);
  n.writeUInt32BE(b.length, 0);
  return Buffer.concat([n, b]);
};
const u32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0, 0);
  return b;
};

/** An exec request's payload: timeout, argv, "K=V" environment. */
export function encodeExec(argv: readonly string[], env: Record<string, string>, timeoutMs: number): Buffer {
  if (argv.length === 0) throw new NoidError("INVALID_ARGUMENT", "exec: empty argv", { field: "argv" });
  for (const k of Object.keys(env)) {
    if (k === "" || k.includes("=") || k.includes("\0")) throw new NoidError("INVALID_ARGUMENT", `exec: bad env name ${JSON.stringify(k)}`, { field: "env" });
  }
  for (const a of [...argv, ...Object.values(env)]) {
    // execve takes C strings: a NUL would silently truncate.
    if (a.includes("\0")) throw new NoidError("INVALID_ARGUMENT", "exec: argument contains NUL", { field: "argv" });
  }
  const envList = Object.entries(env).map(([k, v]) => `${k}=${v}`);
  const payload = Buffer.concat([u32(timeoutMs), u32(argv.length), ...argv.map(str), u32(envList.length), ...envList.map(str)]);
  if (payload.length + 5 > MAX_FRAME) throw new NoidError("INVALID_ARGUMENT", "exec: request too large", { field: "argv" });
  return payload;
}

export interface ExecOutcome {
  exitCode: number;
  timedOut: boolean;
}

export function decodeResult(payload: Buffer): ExecOutcome {
  if (payload.length < 5) throw new NoidError("INTERNAL", "guest agent: short result frame");
  return { exitCode: payload.readInt32BE(0), timedOut: payload[4] === 1 };
}

/** Accumulates stream bytes and yields whole frames; throws on a length that cannot be a frame. */
export class FrameReader {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Frame[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buf.length < 4) break;
      const len = this.buf.readUInt32BE(0);
      if (len < 5 || len > MAX_FRAME) throw new NoidError("INTERNAL", `guest agent: bad frame length ${len}`);
      if (this.buf.length < 4 + len) break;
      frames.push({ type: String.fromCharCode(this.buf[4]!), id: this.buf.readUInt32BE(5), payload: this.buf.subarray(9, 4 + len) });
      this.buf = this.buf.subarray(4 + len);
    }
    return frames;
  }
}
