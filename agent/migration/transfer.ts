// Moves a migration's state file from the source host to the target host over the mesh.
//
// The source serves each file on its mesh address only (WireGuard between hosts: encrypted and
// authenticated by the hosts' keys) at /migrations/<id>, to the bearer of that migration's
// one-time token (the coordinator hands it to both agents over their mTLS sessions; it is
// kept in memory, compared by its SHA-256 in constant time, never logged). The target fetches
// the file, resumes a broken transfer with a Range request from what it already has, and
// checks size and SHA-256 at the end: a file that does not match is deleted and fetched once
// more from the start, then the import fails.
import { createHash, timingSafeEqual } from "node:crypto";
import { createReadStream, createWriteStream, existsSync, renameSync, rmSync, statSync } from "node:fs";
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { NoidError, precondition } from "../../common/errors.js";
import type { Logger } from "../../common/logger.js";
import { digestFile } from "../checkpoint/format.js";

/** TCP port of the transfer server on the mesh address (`noid harden` opens it on the WireGuard interface). */
export const MIGRATION_PORT = 7656;

const ID = /^[0-9a-f]{8,64}$/;
const sha = (b: Uint8Array): Buffer => createHash("sha256").update(b).digest();

interface Offer {
  file: string;
  tokenHash: Buffer;
  size: number;
  timer: NodeJS.Timeout;
}

export interface TransferServerOptions {
  /** The address to listen on (the host's mesh address); undefined: not known yet. */
  host: () => string | undefined;
  /** 0 picks a free port (tests). */
  port: number;
  logger: Logger;
}

/** Serves offered files; listens only while something is offered. */
export class TransferServer {
  private server: Server | undefined;
  private listening: Promise<string> | undefined;
  private readonly offers = new Map<string, Offer>();

  constructor(private readonly opts: TransferServerOptions) {}

  /** Offers `file` under `id` to the bearer of `token` for `ttlMs`; returns its URL. */
  async offer(id: string, file: string, token: Uint8Array, ttlMs: number): Promise<string> {
    if (!ID.test(id)) throw new NoidError("INVALID_ARGUMENT", "bad migration id");
    if (token.length < 16) throw new NoidError("INVALID_ARGUMENT", "the transfer token is too short");
    const base = await this.listen();
    this.withdraw(id);
    const timer = setTimeout(() => this.withdraw(id), ttlMs);
    timer.unref();
    this.offers.set(id, { file, tokenHash: sha(token), size: statSync(file).size, timer });
    return `${base}/migrations/${id}`;
  }

  /** Stops serving `id` (the file itself is the caller's). */
  withdraw(id: string): void {
    const o = this.offers.get(id);
    if (!o) return;
    clearTimeout(o.timer);
    this.offers.delete(id);
    if (this.offers.size === 0) void this.close();
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    this.listening = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  private listen(): Promise<string> {
    if (this.listening) return this.listening;
    const host = this.opts.host();
    if (!host) return Promise.reject(new NoidError("UNAVAILABLE", "this host has no mesh address yet: cannot serve the migration's state"));
    const server = createServer((req, res) => this.handle(req, res));
    // A stalled peer must not hold a file open forever.
    server.requestTimeout = 0;
    server.setTimeout(60_000, (sock) => sock.destroy());
    this.server = server;
    this.listening = new Promise<string>((resolve, reject) => {
      server.once("error", (e) => {
        this.server = undefined;
        this.listening = undefined;
        reject(new NoidError("UNAVAILABLE", `serving migrations on ${host}:${this.opts.port}: ${e.message}`, { cause: e }));
      });
      server.listen(this.opts.port, host, () => {
        const a = server.address() as AddressInfo;
        resolve(`http://${host.includes(":") ? `[${host}]` : host}:${a.port}`);
      });
    });
    return this.listening;
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const deny = (code: number, why: string) => {
      res.writeHead(code, { "content-type": "text/plain" }).end(`${why}\n`);
    };
    const m = /^\/migrations\/([0-9a-f]{8,64})$/.exec(req.url ?? "");
    if (req.method !== "GET" || !m) return deny(404, "not found");
    const offer = this.offers.get(m[1]!);
    const auth = /^Bearer ([A-Za-z0-9_-]{16,})$/.exec(req.headers.authorization ?? "");
    const given = auth ? sha(Buffer.from(auth[1]!, "base64url")) : Buffer.alloc(32);
    // The same answer for an unknown migration and a wrong token: nothing to probe.
    if (!offer || !timingSafeEqual(given, offer.tokenHash)) {
      this.opts.logger.warn({ migration: m[1], peer: req.socket.remoteAddress }, "migration transfer refused: unknown migration or wrong token");
      return deny(403, "forbidden");
    }
    let start = 0;
    const range = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (range) start = Number(range[1]);
    if (start > offer.size) return deny(416, "range past the end");
    const headers = { "content-type": "application/octet-stream", "content-length": String(offer.size - start) };
    if (range) res.writeHead(206, { ...headers, "content-range": `bytes ${start}-${offer.size - 1}/${offer.size}` });
    else res.writeHead(200, headers);
    if (start === offer.size) return void res.end();
    pipeline(createReadStream(offer.file, { start }), res).catch((e: unknown) =>
      this.opts.logger.info({ migration: m[1], err: e instanceof Error ? e.message : String(e) }, "migration transfer interrupted"),
    );
  }
}

export interface FetchOptions {
  size: number;
  sha256: string;
  /** Connection attempts (each resumes where the last stopped). */
  attempts?: number;
  /** A connection that stays silent this long is dropped and resumed. */
  idleMs?: number;
  logger?: Logger;
}

class Refused extends Error {}

/** One GET from `have` onwards, appended to `part`. */
function getFrom(url: string, token: Uint8Array, part: string, have: number, idleMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = request(url, {
      method: "GET",
      headers: { authorization: `Bearer ${Buffer.from(token).toString("base64url")}`, ...(have > 0 ? { range: `bytes=${have}-` } : {}) },
    });
    req.setTimeout(idleMs, () => req.destroy(new Error(`no data for ${idleMs} ms`)));
    req.on("error", reject);
    req.on("response", (res) => {
      if (res.statusCode === 403 || res.statusCode === 404) {
        res.resume();
        return reject(new Refused(`the source refused the transfer (HTTP ${res.statusCode}): unknown migration or wrong token`));
      }
      if (res.statusCode !== 200 && res.statusCode !== 206) {
        res.resume();
        return reject(new Error(`HTTP ${res.statusCode}`));
      }
      // A server that ignored the range sends everything: start the file over.
      const flags = res.statusCode === 206 ? "a" : "w";
      pipeline(res, createWriteStream(part, { flags, mode: 0o600 })).then(
        () => (res.complete ? resolve() : reject(new Error("connection closed early"))),
        reject,
      );
    });
    req.end();
  });
}

/**
 * Fetches `url` into `dst` (through `dst`.part), resuming after broken connections; resolves
 * once `dst` has the expected size and SHA-256.
 */
export async function fetchFile(url: string, token: Uint8Array, dst: string, o: FetchOptions): Promise<void> {
  const part = `${dst}.part`;
  const attempts = o.attempts ?? 8;
  let restarts = 0;
  let last = "";
  for (let i = 0; i < attempts; i++) {
    let have = existsSync(part) ? statSync(part).size : 0;
    if (have > o.size) {
      rmSync(part, { force: true });
      have = 0;
    }
    if (have < o.size) {
      try {
        await getFrom(url, token, part, have, o.idleMs ?? 30_000);
      } catch (e) {
        if (e instanceof Refused) throw new NoidError("PERMISSION_DENIED", `fetching the migration's state from ${new URL(url).host}: ${e.message}`);
        last = e instanceof Error ? e.message : String(e);
        const now = existsSync(part) ? statSync(part).size : 0;
        o.logger?.info({ url, have: now, size: o.size, err: last }, "migration transfer broken; resuming");
        await new Promise((r) => setTimeout(r, Math.min(2_000, 100 * 2 ** i)));
        continue;
      }
    }
    const dg = await digestFile(part);
    if (dg.size === o.size && dg.sha256 === o.sha256) {
      renameSync(part, dst);
      return;
    }
    // Wrong bytes: start over once, from nothing.
    rmSync(part, { force: true });
    last = `got ${dg.size} bytes with sha256 ${dg.sha256}, expected ${o.size} bytes with sha256 ${o.sha256}`;
    if (++restarts > 1) break;
    o.logger?.warn({ url, err: last }, "migration transfer does not match its checksum; fetching it again from the start");
  }
  rmSync(part, { force: true });
  throw precondition(`fetching the migration's state from ${new URL(url).host} failed: ${last}`);
}
