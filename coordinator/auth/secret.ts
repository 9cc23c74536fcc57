// Token secrets: 64 hex characters (as in noid), stored only as SHA-256.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";

export function newSecret(): string {
  return randomBytes(32).toString("hex");
}

export function sha256Hex(secret: string): string {
  return createHash("sha256").update(secret, "utf8").digest("hex");
}

/** Public id of a token: a prefix of its hash, safe to print and log. */
export function tokenId(hash: string): string {
  return hash.slice(0, 12);
}

const SECRET = /^[0-9a-f]{64}$/;

export function isWellFormedSecret(s: string): boolean {
  return SECRET.test(s);
}

/** Constant-time comparison of two hex digests. */
export function sameDigest(a: string, b: string): boolean {
  const ba = Buffer.from(a, "hex");
  const bb = Buffer.from(b, "hex");
  return ba.length === bb.length && timingSafeEqual(ba, bb);
}
