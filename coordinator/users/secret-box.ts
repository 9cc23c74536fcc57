// Secrets the coordinator must be able to read back (TOTP seeds) are kept in
// etcd sealed with AES-256-GCM under a key that lives only in the state dir
// (<state_dir>/secrets.key, mode 0600, created on first start). Replicas of one
// cluster share the file like they share admin.token (deploy/ha.md). A sealed
// value names its key (the first bytes of the key's SHA-256), so a replica with
// the wrong key says so instead of failing every login obscurely.
//
// Format: "aes256gcm:v1:<key id hex>:<base64 of iv(12) | tag(16) | ciphertext>".
// The record's purpose and owner are the additional data: a sealed secret
// copied into another user's record does not open.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from "node:crypto";
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { NoidError } from "../../common/errors.js";

export const SECRETS_KEY_FILE = "secrets.key";
const PREFIX = "aes256gcm:v1:";

export class SecretBox {
  readonly keyId: string;

  constructor(private readonly key: Buffer) {
    if (key.length !== 32) throw new NoidError("INVALID_ARGUMENT", `a secrets key is 32 bytes (got ${key.length})`);
    this.keyId = createHash("sha256").update(key).digest("hex").slice(0, 8);
  }

  /** Pure: is `stored` sealed (as opposed to a legacy plaintext value)? */
  static isSealed(stored: string): boolean {
    return stored.startsWith(PREFIX);
  }

  seal(plaintext: string, context: string): string {
    if (plaintext === "") return "";
    const iv = randomBytes(12);
    const c = createCipheriv("aes-256-gcm", this.key, iv);
    c.setAAD(Buffer.from(context, "utf8"));
    const ct = Buffer.concat([c.update(plaintext, "utf8"), c.final()]);
    return `${PREFIX}${this.keyId}:${Buffer.concat([iv, c.getAuthTag(), ct]).toString("base64")}`;
  }

  /** The plaintext of a sealed value; a value that is not sealed is returned as is (records from before encryption). */
  open(stored: string, context: string): string {
    if (!SecretBox.isSealed(stored)) return stored;
    const rest = stored.slice(PREFIX.length);
    const colon = rest.indexOf(":");
    const kid = rest.slice(0, colon);
    if (colon < 0 || kid !== this.keyId) {
      throw new NoidError(
        "FAILED_PRECONDITION",
        `a secret of ${context} was sealed with key ${kid || "?"}, but this coordinator's ${SECRETS_KEY_FILE} is key ${this.keyId}: copy ${SECRETS_KEY_FILE} from the first replica's state_dir (deploy/ha.md)`,
      );
    }
    const raw = Buffer.from(rest.slice(colon + 1), "base64");
    if (raw.length < 28) throw new NoidError("INTERNAL", `sealed secret of ${context} is truncated`);
    try {
      const d = createDecipheriv("aes-256-gcm", this.key, raw.subarray(0, 12));
      d.setAAD(Buffer.from(context, "utf8"));
      d.setAuthTag(raw.subarray(12, 28));
      return Buffer.concat([d.update(raw.subarray(28)), d.final()]).toString("utf8");
    } catch (e) {
      throw new NoidError("INTERNAL", `sealed secret of ${context} does not authenticate (altered, or sealed for another record)`, { cause: e });
    }
  }
}

/** Reads <stateDir>/secrets.key, creating it (32 random bytes, hex, mode 0600) on first start. */
export function loadOrCreateSecretBox(stateDir: string, onCreate?: (path: string) => void): SecretBox {
  const file = join(stateDir, SECRETS_KEY_FILE);
  if (!existsSync(file)) {
    writeFileSync(file, randomBytes(32).toString("hex") + "\n", { mode: 0o600, flag: "wx" });
    chmodSync(file, 0o600);
    onCreate?.(file);
  }
  const hex = readFileSync(file, "utf8").trim();
  if (!/^[0-9a-f]{64}$/.test(hex)) throw new NoidError("INVALID_ARGUMENT", `${file}: expected 64 hex characters (a 32-byte key)`);
  return new SecretBox(Buffer.from(hex, "hex"));
}
