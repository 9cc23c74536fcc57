// The checkpoint file format: container round trip, AES-256-GCM wrapper, wrong key refused
// before decrypting, any flipped byte refused at the tag with nothing left behind.
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { decryptFile, digestFile, encryptFile, isEncrypted, parseKey, readContainer, writeContainer } from "../../agent/checkpoint/format.js";

const dir = mkdtempSync(join(tmpdir(), "noid-ckpt-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("checkpoint file format", () => {
  const memory = randomBytes(300_000);
  const disk = randomBytes(70_001);
  const key = randomBytes(32);
  writeFileSync(join(dir, "m"), memory);
  writeFileSync(join(dir, "d"), disk);
  writeFileSync(join(dir, "empty"), "");

  it("a container holds named sections and gives them back byte for byte", async () => {
    await writeContainer(join(dir, "c"), [
      { name: "memory", path: join(dir, "m") },
      { name: "disk", path: join(dir, "d") },
      { name: "empty", path: join(dir, "empty") },
    ]);
    expect(await readContainer(join(dir, "c"), join(dir, "out"))).toEqual(["memory", "disk", "empty"]);
    expect(readFileSync(join(dir, "out", "memory")).equals(memory)).toBe(true);
    expect(readFileSync(join(dir, "out", "disk")).equals(disk)).toBe(true);
    expect(readFileSync(join(dir, "out", "empty")).length).toBe(0);
    const dg = await digestFile(join(dir, "c"));
    expect(dg.size).toBe(readFileSync(join(dir, "c")).length);
    expect(dg.sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it("a truncated container is refused", async () => {
    const c = readFileSync(join(dir, "c"));
    writeFileSync(join(dir, "trunc"), c.subarray(0, c.length - 10));
    await expect(readContainer(join(dir, "trunc"), join(dir, "out2"))).rejects.toThrow(/damaged/);
  });

  it("encrypts (no plaintext in the file) and decrypts with the right key", async () => {
    await encryptFile(join(dir, "c"), join(dir, "e"), key);
    const enc = readFileSync(join(dir, "e"));
    expect(isEncrypted(join(dir, "e"))).toBe(true);
    expect(isEncrypted(join(dir, "c"))).toBe(false);
    expect(enc.includes(memory.subarray(1000, 1032))).toBe(false);
    await decryptFile(join(dir, "e"), join(dir, "p"), key);
    expect(readFileSync(join(dir, "p")).equals(readFileSync(join(dir, "c")))).toBe(true);
  });

  it("a wrong key is refused before anything is written", async () => {
    await expect(decryptFile(join(dir, "e"), join(dir, "wrong"), randomBytes(32))).rejects.toMatchObject({ code: "PERMISSION_DENIED", message: expect.stringMatching(/wrong key/) });
    expect(existsSync(join(dir, "wrong"))).toBe(false);
  });

  it("any tampered byte (header, body or tag) fails authentication and leaves no output", async () => {
    const enc = readFileSync(join(dir, "e"));
    // Skip the key id (bytes 10..17): changing it is a "wrong key", tested above.
    for (const at of [9, 20, 40, 5000, enc.length - 17, enc.length - 1]) {
      const bad = Buffer.from(enc);
      bad[at] = bad[at]! ^ 0x01;
      writeFileSync(join(dir, "bad"), bad);
      await expect(decryptFile(join(dir, "bad"), join(dir, "badout"), key), `byte ${at}`).rejects.toMatchObject({ code: "FAILED_PRECONDITION" });
      expect(existsSync(join(dir, "badout"))).toBe(false);
    }
    writeFileSync(join(dir, "bad"), enc.subarray(0, enc.length - 100));
    await expect(decryptFile(join(dir, "bad"), join(dir, "badout"), key)).rejects.toThrow(/authentication/);
    expect(readdirSync(dir)).not.toContain("badout");
  });

  it("keys: 32 raw bytes or 64 hex characters; anything else is refused", () => {
    expect(parseKey(key).equals(key)).toBe(true);
    expect(parseKey(Buffer.from(`${key.toString("hex")}\n`)).equals(key)).toBe(true);
    expect(() => parseKey(Buffer.from("short"))).toThrow(/32 bytes/);
  });
});
