// TOTP (RFC 6238) over HOTP (RFC 4226) with node:crypto: pure functions of a
// key and a time, so tests use the RFC's own vectors. Secrets travel as
// base32 (RFC 4648, no padding) as authenticator apps expect.
import { createHmac, randomBytes } from "node:crypto";

export type TotpAlgorithm = "sha1" | "sha256" | "sha512";

export interface TotpParams {
  stepSeconds: number;
  digits: number;
  algorithm: TotpAlgorithm;
}

/** What every authenticator app assumes when the URI says nothing else. */
export const DEFAULT_TOTP: TotpParams = { stepSeconds: 30, digits: 6, algorithm: "sha1" };

const B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

export function base32Encode(buf: Uint8Array): string {
  let bits = 0;
  let value = 0;
  let out = "";
  for (const byte of buf) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5) {
      out += B32[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += B32[(value << (5 - bits)) & 31];
  return out;
}

/** Decodes base32, ignoring case, spaces and padding; undefined if it is not base32. */
export function base32Decode(text: string): Buffer | undefined {
  const clean = text.replace(/[\s=]/g, "").toUpperCase();
  let bits = 0;
  let value = 0;
  const out: number[] = [];
  for (const ch of clean) {
    const v = B32.indexOf(ch);
    if (v < 0) return undefined;
    value = ((value << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** RFC 4226 HOTP: dynamic truncation of HMAC(key, counter). */
export function hotp(key: Uint8Array, counter: number, digits: number, algorithm: TotpAlgorithm = "sha1"): string {
  const msg = Buffer.alloc(8);
  msg.writeBigUInt64BE(BigInt(counter));
  const mac = createHmac(algorithm, key).update(msg).digest();
  const offset = mac[mac.length - 1]! & 0x0f;
  const bin = (mac.readUInt32BE(offset) & 0x7fffffff) % 10 ** digits;
  return String(bin).padStart(digits, "0");
}

export function timeStep(timeMs: number, p: TotpParams = DEFAULT_TOTP): number {
  return Math.floor(timeMs / 1000 / p.stepSeconds);
}

export function totp(key: Uint8Array, timeMs: number, p: TotpParams = DEFAULT_TOTP): string {
  return hotp(key, timeStep(timeMs, p), p.digits, p.algorithm);
}

/**
 * Checks `code` against the steps around `timeMs` (±`window`, for clock
 * drift) and returns the matching step, or undefined. Callers refuse a step
 * at or before the last one accepted, so a code works once.
 */
export function verifyTotp(key: Uint8Array, code: string, timeMs: number, window = 1, p: TotpParams = DEFAULT_TOTP): number | undefined {
  if (!new RegExp(`^\\d{${p.digits}}$`).test(code)) return undefined;
  const now = timeStep(timeMs, p);
  for (let d = -window; d <= window; d++) {
    if (hotp(key, now + d, p.digits, p.algorithm) === code) return now + d;
  }
  return undefined;
}

/** 160 random bits, the size RFC 4226 recommends for SHA-1. */
export function newTotpSecret(): string {
  return base32Encode(randomBytes(20));
}

/** The otpauth:// URI authenticator apps read from a QR code. */
export function otpauthUri(issuer: string, account: string, secretB32: string): string {
  const label = `${encodeURIComponent(issuer)}:${encodeURIComponent(account)}`;
  return `otpauth://totp/${label}?secret=${secretB32}&issuer=${encodeURIComponent(issuer)}&algorithm=SHA1&digits=6&period=30`;
}
