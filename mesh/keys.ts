// WireGuard keys with node:crypto: X25519, 32 raw bytes, base64 (the form `wg` reads and prints).
// The private key never leaves this host and never appears in argv: it lives in a 0600 file
// and reaches `wg` as a file path.
import { createPrivateKey, createPublicKey, generateKeyPairSync } from "node:crypto";
import { chmodSync, mkdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname } from "node:path";
import { invalid, during } from "../common/errors.js";

export interface WgKeyPair {
  privateKey: string;
  publicKey: string;
}

// PKCS#8 DER header of an X25519 private key; the 32 raw key bytes follow it.
const PKCS8_X25519_PREFIX = Buffer.from("302e020100300506032b656e04220420", "hex");
const KEY_RE = /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/;

const b64urlToB64 = (s: string): string => Buffer.from(s, "base64url").toString("base64");

/** True for a base64 string of exactly 32 bytes, as WireGuard keys are. */
export function isWgKey(s: string): boolean {
  return KEY_RE.test(s) && Buffer.from(s, "base64").length === 32;
}

export function generateKeyPair(): WgKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync("x25519");
  const priv = privateKey.export({ format: "jwk" }).d;
  const pub = publicKey.export({ format: "jwk" }).x;
  if (!priv || !pub) throw new Error("x25519 key export returned no key material");
  return { privateKey: b64urlToB64(priv), publicKey: b64urlToB64(pub) };
}

/** The public key of a base64 private key (what `wg pubkey` prints). */
export function publicKeyOf(privateKey: string): string {
  if (!isWgKey(privateKey)) throw invalid("privateKey", "not a base64 32-byte WireGuard key");
  const der = Buffer.concat([PKCS8_X25519_PREFIX, Buffer.from(privateKey, "base64")]);
  const key = createPrivateKey({ key: der, format: "der", type: "pkcs8" });
  const x = createPublicKey(key).export({ format: "jwk" }).x;
  if (!x) throw new Error("x25519 public key export returned no key material");
  return b64urlToB64(x);
}

/**
 * Reads the private key at `path`, or creates it (mode 0600, exclusive create so two
 * starting agents cannot both write one). A readable-by-others key file is tightened.
 */
export function loadOrCreateKey(path: string): WgKeyPair {
  try {
    let text: string | undefined;
    try {
      text = readFileSync(path, "utf8").trim();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    }
    if (text === undefined) {
      const pair = generateKeyPair();
      mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
      try {
        writeFileSync(path, `${pair.privateKey}\n`, { mode: 0o600, flag: "wx" });
        return pair;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        text = readFileSync(path, "utf8").trim(); // another process won the race: use its key
      }
    }
    if (!isWgKey(text)) throw invalid("keyFile", `${path} does not hold a WireGuard private key`);
    if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
    return { privateKey: text, publicKey: publicKeyOf(text) };
  } catch (e) {
    throw during(`loading WireGuard key ${path}`, e);
  }
}
