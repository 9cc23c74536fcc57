// Passwords: argon2id (@node-rs/argon2, OWASP's minimum parameters are its
// defaults) stored as a PHC string; the password itself is never stored or
// logged. Checks are pure and name the field.
import { hash, verify } from "@node-rs/argon2";
import { randomBytes } from "node:crypto";
import { invalid } from "../../common/errors.js";

export const MIN_PASSWORD = 12;
/** argon2 hashes any length, but a megabyte "password" is a cheap way to burn CPU. */
export const MAX_PASSWORD = 256;

export function checkPassword(field: string, pw: string): string {
  if (pw.length === 0) throw invalid(field, "is required");
  if (pw.length < MIN_PASSWORD) throw invalid(field, `must be at least ${MIN_PASSWORD} characters`);
  if (pw.length > MAX_PASSWORD) throw invalid(field, `must be at most ${MAX_PASSWORD} characters`);
  return pw;
}

export function hashPassword(pw: string): Promise<string> {
  return hash(pw);
}

/** False for a wrong password or a malformed hash; never throws on bad input. */
export async function verifyPassword(phc: string, pw: string): Promise<boolean> {
  if (phc === "" || pw.length > MAX_PASSWORD) return false;
  try {
    return await verify(phc, pw);
  } catch {
    return false;
  }
}

/** 24 characters from 18 random bytes (144 bits), URL-safe: for rotate-password. */
export function generatePassword(): string {
  return randomBytes(18).toString("base64url");
}

/**
 * A hash to verify against when the user does not exist, so a login for an
 * unknown name costs the same time as one with a wrong password.
 */
export function dummyHash(): Promise<string> {
  return hash(randomBytes(16).toString("hex"));
}
