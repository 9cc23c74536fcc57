// Checkpoint files on a host. A checkpoint is one file: a plain container of named sections
// (the driver's memory state, its disk), optionally wrapped in AES-256-GCM. Everything streams:
// a guest's memory is never held in the agent's memory.
//
// Container (plain):   "NOIDCKP1" | { u8 nameLen | name | u64be length | bytes }* | u8 0
// Encrypted wrapper:   "NOIDENC1" | u8 version=1 | u8 alg=1 (AES-256-GCM) | 8-byte key id |
//                      12-byte nonce | ciphertext of the container | 16-byte GCM tag
// The 30-byte header is the GCM additional data (authenticated). The key id (the first 8
// bytes of SHA-256("noid-checkpoint-key-id" | key)) lets a wrong key be refused before any
// decryption; the tag refuses a damaged or tampered file. Decrypted bytes are written to a
// temporary file and used only after the tag checked out.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, openSync, readSync, closeSync, statSync, rmSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { pipeline } from "node:stream/promises";
import { NoidError, invalid } from "../../common/errors.js";

export const KEY_BYTES = 32;
const CONTAINER_MAGIC = Buffer.from("NOIDCKP1");
const ENC_MAGIC = Buffer.from("NOIDENC1");
const HEADER_LEN = 8 + 1 + 1 + 8 + 12;
const TAG_LEN = 16;
const SECTION_NAME = /^[a-z][a-z0-9-]{0,31}$/;

/** A key given as 32 raw bytes, or as 64 hex characters (a trailing newline is fine). */
export function parseKey(raw: Uint8Array): Buffer {
  const b = Buffer.from(raw);
  if (b.length === KEY_BYTES) return b;
  const text = b.toString("latin1").trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, "hex");
  throw invalid("key", `a checkpoint key is ${KEY_BYTES} bytes (or 64 hex characters); got ${b.length} bytes`);
}

export function keyId(key: Buffer): Buffer {
  return createHash("sha256").update("noid-checkpoint-key-id").update(key).digest().subarray(0, 8);
}

export interface Section {
  name: string;
  path: string;
}

function u64(n: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

/** Writes the sections' files into one container file. */
export async function writeContainer(dst: string, sections: readonly Section[]): Promise<void> {
  const out = createWriteStream(dst, { mode: 0o600 });
  const write = (b: Buffer) => new Promise<void>((res, rej) => out.write(b, (e) => (e ? rej(e) : res())));
  try {
    await write(CONTAINER_MAGIC);
    for (const s of sections) {
      if (!SECTION_NAME.test(s.name)) throw invalid("section", `bad section name ${JSON.stringify(s.name)}`);
      const name = Buffer.from(s.name);
      await write(Buffer.concat([Buffer.from([name.length]), name, u64(statSync(s.path).size)]));
      await pipeline(createReadStream(s.path), out, { end: false });
    }
    await write(Buffer.from([0]));
  } finally {
    await new Promise<void>((res) => out.end(res));
  }
}

/** Splits a container into `<outDir>/<section name>` files; returns the section names in order. */
export async function readContainer(src: string, outDir: string): Promise<string[]> {
  mkdirSync(outDir, { recursive: true });
  const fd = openSync(src, "r");
  const size = statSync(src).size;
  const names: string[] = [];
  const bad = (why: string) => new NoidError("FAILED_PRECONDITION", `checkpoint file ${src} is damaged: ${why}`);
  try {
    const head = Buffer.alloc(8);
    if (readSync(fd, head, 0, 8, 0) !== 8 || !head.equals(CONTAINER_MAGIC)) throw bad("not a noid checkpoint");
    let pos = 8;
    for (;;) {
      const lenB = Buffer.alloc(1);
      if (readSync(fd, lenB, 0, 1, pos) !== 1) throw bad("truncated");
      pos += 1;
      const nameLen = lenB[0]!;
      if (nameLen === 0) break;
      const hdr = Buffer.alloc(nameLen + 8);
      if (readSync(fd, hdr, 0, hdr.length, pos) !== hdr.length) throw bad("truncated section header");
      pos += hdr.length;
      const name = hdr.subarray(0, nameLen).toString();
      if (!SECTION_NAME.test(name) || names.includes(name)) throw bad(`bad section ${JSON.stringify(name)}`);
      const len = Number(hdr.readBigUInt64BE(nameLen));
      if (pos + len > size) throw bad(`section ${name} runs past the end`);
      if (len > 0) await pipeline(createReadStream(src, { start: pos, end: pos + len - 1 }), createWriteStream(join(outDir, name), { mode: 0o600 }));
      else closeSync(openSync(join(outDir, name), "w", 0o600));
      names.push(name);
      pos += len;
    }
    if (pos !== size) throw bad("trailing bytes");
    return names;
  } finally {
    closeSync(fd);
  }
}

/** Whether a file is an encrypted checkpoint. */
export function isEncrypted(path: string): boolean {
  const fd = openSync(path, "r");
  try {
    const b = Buffer.alloc(8);
    return readSync(fd, b, 0, 8, 0) === 8 && b.equals(ENC_MAGIC);
  } finally {
    closeSync(fd);
  }
}

export async function encryptFile(src: string, dst: string, key: Buffer): Promise<void> {
  if (key.length !== KEY_BYTES) throw invalid("key", `must be ${KEY_BYTES} bytes`);
  const nonce = randomBytes(12);
  const header = Buffer.concat([ENC_MAGIC, Buffer.from([1, 1]), keyId(key), nonce]);
  const cipher = createCipheriv("aes-256-gcm", key, nonce);
  cipher.setAAD(header);
  const out = createWriteStream(dst, { mode: 0o600 });
  out.write(header);
  await pipeline(createReadStream(src), cipher, out, { end: false });
  const tag = cipher.getAuthTag();
  await new Promise<void>((res, rej) => out.end(tag, () => res()).on("error", rej));
}

/**
 * Decrypts into `dst`. A wrong key is refused before anything is written; a damaged file
 * fails at the tag and `dst` is removed: nothing unauthenticated is left behind.
 */
export async function decryptFile(src: string, dst: string, key: Buffer): Promise<void> {
  const size = statSync(src).size;
  if (size < HEADER_LEN + TAG_LEN) throw new NoidError("FAILED_PRECONDITION", `checkpoint file ${src} is damaged: too short`);
  const fd = openSync(src, "r");
  const header = Buffer.alloc(HEADER_LEN);
  const tag = Buffer.alloc(TAG_LEN);
  try {
    readSync(fd, header, 0, HEADER_LEN, 0);
    readSync(fd, tag, 0, TAG_LEN, size - TAG_LEN);
  } finally {
    closeSync(fd);
  }
  if (!header.subarray(0, 8).equals(ENC_MAGIC)) throw new NoidError("FAILED_PRECONDITION", `checkpoint file ${src} is not encrypted`);
  if (header[8] !== 1 || header[9] !== 1) throw new NoidError("FAILED_PRECONDITION", `checkpoint file ${src}: unknown format version ${header[8]}/${header[9]}`);
  if (key.length !== KEY_BYTES || !header.subarray(10, 18).equals(keyId(key))) {
    throw new NoidError("PERMISSION_DENIED", "wrong key: this checkpoint was encrypted with another key");
  }
  const decipher = createDecipheriv("aes-256-gcm", key, header.subarray(18, 30));
  decipher.setAAD(header);
  decipher.setAuthTag(tag);
  try {
    if (size - TAG_LEN > HEADER_LEN) {
      await pipeline(createReadStream(src, { start: HEADER_LEN, end: size - TAG_LEN - 1 }), decipher, createWriteStream(dst, { mode: 0o600 }));
    } else {
      decipher.final();
      closeSync(openSync(dst, "w", 0o600));
    }
  } catch (e) {
    rmSync(dst, { force: true });
    throw new NoidError("FAILED_PRECONDITION", `checkpoint file ${src} failed authentication (tampered or damaged): nothing restored`, { cause: e });
  }
}

export interface FileDigest {
  size: number;
  sha256: string;
}

export async function digestFile(path: string): Promise<FileDigest> {
  const h = createHash("sha256");
  let size = 0;
  for await (const chunk of createReadStream(path)) {
    h.update(chunk as Buffer);
    size += (chunk as Buffer).length;
  }
  return { size, sha256: h.digest("hex") };
}
