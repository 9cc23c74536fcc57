import { mkdtempSync, readFileSync, rmSync, statSync, chmodSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { run } from "../../common/run.js";
import { generateKeyPair, isWgKey, loadOrCreateKey, publicKeyOf } from "../../mesh/keys.js";

const dir = mkdtempSync(join(tmpdir(), "noid-mesh-keys-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe("WireGuard keys", () => {
  it("derive the same public key as `wg pubkey`, both ways", async () => {
    const pair = generateKeyPair();
    expect(isWgKey(pair.privateKey) && isWgKey(pair.publicKey)).toBe(true);
    const fromWg = await run(["wg", "pubkey"], { input: `${pair.privateKey}\n` });
    expect(fromWg.stdout.trim()).toBe(pair.publicKey);

    const wgPriv = (await run(["wg", "genkey"])).stdout.trim();
    const wgPub = (await run(["wg", "pubkey"], { input: `${wgPriv}\n` })).stdout.trim();
    expect(publicKeyOf(wgPriv)).toBe(wgPub);
  });

  it("rejects what is not a 32-byte base64 key", () => {
    expect(isWgKey("abc")).toBe(false);
    expect(isWgKey(Buffer.alloc(31).toString("base64"))).toBe(false);
    expect(() => publicKeyOf("not a key")).toThrow(/privateKey/);
  });

  it("creates a key file with mode 0600 once and loads the same key after", () => {
    const path = join(dir, "sub", "wg.key");
    const a = loadOrCreateKey(path);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readFileSync(path, "utf8").trim()).toBe(a.privateKey);
    expect(loadOrCreateKey(path)).toEqual(a);
  });

  it("tightens a key file others can read, and refuses a file without a key", () => {
    const path = join(dir, "loose.key");
    const k = generateKeyPair();
    writeFileSync(path, `${k.privateKey}\n`);
    chmodSync(path, 0o644);
    expect(loadOrCreateKey(path).publicKey).toBe(k.publicKey);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const bad = join(dir, "bad.key");
    writeFileSync(bad, "hello\n", { mode: 0o600 });
    expect(() => loadOrCreateKey(bad)).toThrow(/does not hold a WireGuard private key/);
  });
});
