// The AES-256-GCM box that seals TOTP secrets in etcd.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { SecretBox, loadOrCreateSecretBox, SECRETS_KEY_FILE } from "../../coordinator/users/secret-box.js";

describe("SecretBox", () => {
  const box = new SecretBox(randomBytes(32));

  it("round-trips, never shows the plaintext, and seals the same secret differently each time", () => {
    const a = box.seal("JBSWY3DPEHPK3PXP", "users/alice/totp_secret");
    const b = box.seal("JBSWY3DPEHPK3PXP", "users/alice/totp_secret");
    expect(a).not.toContain("JBSWY3DPEHPK3PXP");
    expect(a).not.toBe(b);
    expect(box.open(a, "users/alice/totp_secret")).toBe("JBSWY3DPEHPK3PXP");
    expect(box.seal("", "x")).toBe("");
  });

  it("passes a legacy plaintext value through (it is resealed by the caller)", () => {
    expect(SecretBox.isSealed("JBSWY3DPEHPK3PXP")).toBe(false);
    expect(box.open("JBSWY3DPEHPK3PXP", "users/alice/totp_secret")).toBe("JBSWY3DPEHPK3PXP");
  });

  it("refuses a value moved to another record, an altered one, and one sealed with another key", () => {
    const s = box.seal("secret", "users/alice/totp_secret");
    expect(() => box.open(s, "users/mallory/totp_secret")).toThrow(/does not authenticate/);
    const raw = Buffer.from(s.slice(s.lastIndexOf(":") + 1), "base64");
    raw[raw.length - 1]! ^= 1;
    expect(() => box.open(s.slice(0, s.lastIndexOf(":") + 1) + raw.toString("base64"), "users/alice/totp_secret")).toThrow(/does not authenticate/);
    expect(() => new SecretBox(randomBytes(32)).open(s, "users/alice/totp_secret")).toThrow(/secrets\.key/);
  });

  it("creates the key file once, mode 0600, and reads the same key afterwards", () => {
    const dir = mkdtempSync(join(tmpdir(), "noid-box-"));
    try {
      const created: string[] = [];
      const b1 = loadOrCreateSecretBox(dir, (p) => created.push(p));
      const b2 = loadOrCreateSecretBox(dir, (p) => created.push(p));
      expect(created).toEqual([join(dir, SECRETS_KEY_FILE)]);
      expect(statSync(join(dir, SECRETS_KEY_FILE)).mode & 0o777).toBe(0o600);
      expect(readFileSync(join(dir, SECRETS_KEY_FILE), "utf8").trim()).toMatch(/^[0-9a-f]{64}$/);
      expect(b2.open(b1.seal("x", "c"), "c")).toBe("x");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
