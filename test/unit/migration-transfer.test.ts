// The migration file transfer with a real HTTP server on loopback: a broken connection is
// resumed where it stopped (Range), a wrong token or an unknown migration is refused without
// retries, bytes that do not match the checksum are fetched once more and then refused, and
// a withdrawn offer is gone.
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TransferServer, fetchFile } from "../../agent/migration/transfer.js";
import { createLogger } from "../../common/logger.js";

const dir = mkdtempSync("/tmp/noid-mt-");
const logger = createLogger({ name: "test", level: "silent" });
const content = randomBytes(3 << 20);
const sha = createHash("sha256").update(content).digest("hex");
const src = join(dir, "state.ckpt");
const token = randomBytes(32);
const id = "0123456789abcdef";

describe("migration transfer", () => {
  let server: TransferServer;
  let url = "";
  beforeAll(async () => {
    writeFileSync(src, content);
    server = new TransferServer({ host: () => "127.0.0.1", port: 0, logger });
    url = await server.offer(id, src, token, 60_000);
  });
  afterAll(async () => {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("fetches a file, checked by size and SHA-256", async () => {
    const dst = join(dir, "a.ckpt");
    await fetchFile(url, token, dst, { size: content.length, sha256: sha });
    expect(readFileSync(dst).equals(content)).toBe(true);
    expect(existsSync(`${dst}.part`)).toBe(false);
  });

  it("refuses a wrong token and an unknown migration at once, leaving nothing", async () => {
    const dst = join(dir, "b.ckpt");
    const t0 = Date.now();
    await expect(fetchFile(url, randomBytes(32), dst, { size: content.length, sha256: sha })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
    await expect(fetchFile(url.replace(id, "fedcba9876543210"), token, dst, { size: content.length, sha256: sha })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
    expect(Date.now() - t0).toBeLessThan(5_000); // not retried
    expect(existsSync(dst) || existsSync(`${dst}.part`)).toBe(false);
  });

  it("resumes after the connection breaks, with a range request from what it has", async () => {
    // A proxy in front of the real server that cuts the first two responses part-way.
    const ranges: string[] = [];
    let cuts = 2;
    const proxy: Server = createServer((req, res) => {
      ranges.push(req.headers.range ?? "");
      fetch(url, { headers: { authorization: req.headers.authorization ?? "", ...(req.headers.range ? { range: req.headers.range } : {}) } }).then(async (r) => {
        res.writeHead(r.status, Object.fromEntries(r.headers));
        const body = Buffer.from(await r.arrayBuffer());
        if (cuts-- > 0) {
          res.write(body.subarray(0, 700_000));
          setTimeout(() => res.socket?.destroy(), 50);
        } else res.end(body);
      }, () => res.socket?.destroy());
    });
    await new Promise<void>((r) => proxy.listen(0, "127.0.0.1", r));
    try {
      const port = (proxy.address() as AddressInfo).port;
      const dst = join(dir, "c.ckpt");
      await fetchFile(`http://127.0.0.1:${port}/migrations/${id}`, token, dst, { size: content.length, sha256: sha });
      expect(readFileSync(dst).equals(content)).toBe(true);
      // Each retry asks only for what is missing (what arrived before the cut is kept).
      expect(ranges).toHaveLength(3);
      expect(ranges[0]).toBe("");
      const from = ranges.slice(1).map((r) => Number(/^bytes=(\d+)-$/.exec(r)?.[1]));
      expect(from[0]).toBeGreaterThan(0);
      expect(from[1]).toBeGreaterThan(from[0]!);
    } finally {
      proxy.close();
    }
  });

  it("fetches bytes that do not match their checksum once more from the start, then refuses them", async () => {
    const dst = join(dir, "d.ckpt");
    let requests = 0;
    const bad: Server = createServer((_req, res) => {
      requests++;
      res.writeHead(200, { "content-length": String(content.length) }).end(randomBytes(content.length));
    });
    await new Promise<void>((r) => bad.listen(0, "127.0.0.1", r));
    try {
      const port = (bad.address() as AddressInfo).port;
      await expect(fetchFile(`http://127.0.0.1:${port}/migrations/${id}`, token, dst, { size: content.length, sha256: sha })).rejects.toMatchObject({
        code: "FAILED_PRECONDITION",
        message: expect.stringMatching(/expected .* sha256/),
      });
      expect(requests).toBe(2);
      expect(existsSync(dst) || existsSync(`${dst}.part`)).toBe(false);
    } finally {
      bad.close();
    }
  });

  it("a withdrawn offer is refused", async () => {
    const other = "aaaaaaaaaaaaaaaa";
    const u = await server.offer(other, src, token, 60_000);
    server.withdraw(other);
    await expect(fetchFile(u, token, join(dir, "e.ckpt"), { size: content.length, sha256: sha })).rejects.toMatchObject({ code: "PERMISSION_DENIED" });
  });
});
