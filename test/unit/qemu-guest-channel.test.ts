// The guest agent's framing, and the host channel against a fake agent on a unix socket
// that speaks the same protocol as guest-agent/noid-agent.c.
import { mkdtempSync, rmSync } from "node:fs";
import { type Server, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import fc from "fast-check";
import { afterEach, describe, expect, it } from "vitest";
import { FrameReader, MAX_FRAME, decodeResult, encodeExec, encodeFrame } from "../../agent/drivers/qemu/frames.js";
import { GuestChannel } from "../../agent/drivers/qemu/guest-channel.js";

/** Parses an exec payload the way the C agent does. */
function parseExec(p: Buffer): { timeoutMs: number; argv: string[]; env: string[] } {
  let o = 0;
  const u32 = (): number => ((o += 4), p.readUInt32BE(o - 4));
  const list = (): string[] => Array.from({ length: u32() }, () => {
    const n = u32();
    o += n;
    return p.subarray(o - n, o).toString("utf8");
  });
  const timeoutMs = u32();
  return { timeoutMs, argv: list(), env: list() };
}

describe("frames", () => {
  it("round-trips through a reader however the stream is chunked", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ type: fc.constantFrom("O", "E", "R"), id: fc.nat(), payload: fc.uint8Array({ maxLength: 300 }) }), { maxLength: 8 }),
        fc.array(fc.integer({ min: 1, max: 50 }), { minLength: 1 }),
        (frames, cuts) => {
          const stream = Buffer.concat(frames.map((f) => encodeFrame(f.type as "O", f.id, Buffer.from(f.payload))));
          const reader = new FrameReader();
          const got: { type: string; id: number; payload: number[] }[] = [];
          for (let o = 0, i = 0; o < stream.length; i++) {
            const n = cuts[i % cuts.length]!;
            for (const f of reader.push(stream.subarray(o, o + n))) got.push({ type: f.type, id: f.id, payload: [...f.payload] });
            o += n;
          }
          expect(got).toEqual(frames.map((f) => ({ type: f.type, id: f.id, payload: [...f.payload] })));
        },
      ),
    );
  });

  it("encodes exec requests with argv and K=V env, refusing what execve cannot carry", () => {
    expect(parseExec(encodeExec(["sh", "-c", "echo é"], { A: "1", B: "x=y" }, 1500))).toEqual({
      timeoutMs: 1500,
      argv: ["sh", "-c", "echo é"],
      env: ["A=1", "B=x=y"],
    });
    expect(() => encodeExec([], {}, 0)).toThrow(/empty argv/);
    expect(() => encodeExec(["a\0b"], {}, 0)).toThrow(/NUL/);
    expect(() => encodeExec(["x"], { "A=B": "1" }, 0)).toThrow(/bad env name/);
    expect(() => encodeExec(["x".repeat(MAX_FRAME)], {}, 0)).toThrow(/too large/);
  });

  it("rejects a length that cannot be a frame, and decodes results", () => {
    const bad = Buffer.alloc(9);
    bad.writeUInt32BE(2, 0);
    expect(() => new FrameReader().push(bad)).toThrow(/bad frame length/);
    const r = Buffer.alloc(5);
    r.writeInt32BE(-1, 0);
    r[4] = 1;
    expect(decodeResult(r)).toEqual({ exitCode: -1, timedOut: true });
  });
});

describe("GuestChannel", () => {
  let dir: string;
  let server: Server | undefined;
  afterEach(() => {
    server?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A fake agent: first sends a stale frame of another request (as after a host timeout), then answers. */
  async function fakeAgent(): Promise<string> {
    dir = mkdtempSync(join(tmpdir(), "noid-ga-"));
    const path = join(dir, "agent.sock");
    server = createServer((sock) => {
      const reader = new FrameReader();
      sock.on("data", (chunk: Buffer) => {
        for (const f of reader.push(chunk)) {
          sock.write(encodeFrame("O", f.id + 1, Buffer.from("stale")));
          if (f.type === "P") sock.write(encodeFrame("P", f.id, Buffer.from("noid-agent 1")));
          if (f.type === "X") {
            const req = parseExec(f.payload);
            sock.write(encodeFrame("O", f.id, Buffer.from(`${req.argv.join(" ")}\n`)));
            sock.write(encodeFrame("E", f.id, Buffer.from(`${req.env.join(",")}|${req.timeoutMs}`)));
            const r = Buffer.alloc(5);
            r.writeInt32BE(7, 0);
            sock.write(encodeFrame("R", f.id, r));
          }
        }
      });
    });
    await new Promise<void>((res) => server!.listen(path, res));
    return path;
  }

  it("pings and execs, keeping only its own request's frames", async () => {
    const ch = new GuestChannel(await fakeAgent());
    expect(await ch.ping()).toBe("noid-agent 1");
    expect(await ch.exec(["echo", "hi"], { K: "v" }, 900)).toEqual({ stdout: "echo hi\n", stderr: "K=v|900", exitCode: 7 });
  });

  it("scrub sends a ping that got no answer again on a fresh connection, and gives up after its tries", async () => {
    dir = mkdtempSync(join(tmpdir(), "noid-ga-"));
    const path = join(dir, "stuck.sock");
    // Answers pings, except on the connections listed in `mute` (counted from 1), where it stays silent.
    let connections = 0;
    let mute = new Set([1]);
    const sizes: number[] = [];
    server = createServer((sock) => {
      const n = ++connections;
      const reader = new FrameReader();
      sock.on("data", (chunk: Buffer) => {
        for (const f of reader.push(chunk)) {
          sizes.push(f.payload.length);
          if (!mute.has(n) && f.type === "P") sock.write(encodeFrame("P", f.id, Buffer.from("noid-agent 1")));
        }
      });
    });
    await new Promise<void>((res) => server!.listen(path, res));
    const ch = new GuestChannel(path);
    await ch.scrub(3, 4096, 600, 3);
    // The first round's ping went unanswered on the first connection and again on a second,
    // which the other rounds then used: each a full buffer of zeros.
    expect(connections).toBe(2);
    expect(sizes).toEqual([4096, 4096, 4096, 4096]);
    mute = new Set([2, 3, 4]);
    await expect(ch.scrub(1, 16, 300, 3)).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
    // The open connection (2), then two fresh ones.
    expect(connections).toBe(4);
  });

  it("keeps one connection for requests that follow each other, and closes it when idle or after a timeout", async () => {
    dir = mkdtempSync(join(tmpdir(), "noid-ga-"));
    const path = join(dir, "keep.sock");
    // Answers pings, except one whose payload is "mute".
    const opened: number[] = [];
    let closed = 0;
    const seen: string[] = [];
    server = createServer((sock) => {
      opened.push(opened.length + 1);
      const reader = new FrameReader();
      sock.on("close", () => closed++);
      sock.on("data", (chunk: Buffer) => {
        for (const f of reader.push(chunk)) {
          const body = f.payload.toString();
          seen.push(body);
          if (f.type === "P" && body !== "mute") sock.write(encodeFrame("P", f.id, Buffer.from("noid-agent 1")));
        }
      });
    });
    await new Promise<void>((res) => server!.listen(path, res));
    const ch = new GuestChannel(path, 300);
    // Five at once: one connection, sent one after another (the guest serves one at a time).
    expect(await Promise.all([1, 2, 3, 4, 5].map(() => ch.ping(2000)))).toEqual(Array(5).fill("noid-agent 1"));
    expect(opened).toEqual([1]);
    // Idle for longer than 300 ms: closed; the next request opens another.
    await new Promise((r) => setTimeout(r, 600));
    expect(closed).toBe(1);
    expect(await ch.ping(2000)).toBe("noid-agent 1");
    expect(opened).toEqual([1, 2]);
    // A request that times out closes its connection: the next one starts on a fresh one.
    const ping = (payload: string, ms: number) => (ch as unknown as { request(f: Buffer, id: number, t: number, on: (f: { type: string }) => boolean): Promise<void> }).request(encodeFrame("P", 77, Buffer.from(payload)), 77, ms, (f) => f.type === "P");
    await expect(ping("mute", 200)).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
    await ping("again", 2000);
    expect(opened).toEqual([1, 2, 3]);
    expect(seen.slice(-2)).toEqual(["mute", "again"]);
  });

  it("fails as UNAVAILABLE when no agent listens, and DEADLINE_EXCEEDED when it does not answer", async () => {
    dir = mkdtempSync(join(tmpdir(), "noid-ga-"));
    await expect(new GuestChannel(join(dir, "none.sock")).ping()).rejects.toMatchObject({ code: "UNAVAILABLE" });
    const path = join(dir, "mute.sock");
    server = createServer(() => undefined);
    await new Promise<void>((res) => server!.listen(path, res));
    await expect(new GuestChannel(path).ping(200)).rejects.toMatchObject({ code: "DEADLINE_EXCEEDED" });
  });
});
