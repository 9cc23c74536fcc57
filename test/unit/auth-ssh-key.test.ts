// SSH public key validation against keys made by the real ssh-keygen, and
// fingerprints compared with what ssh-keygen -l prints.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { fingerprintId, parseSshKey } from "../../coordinator/users/ssh-key.js";
import { isNoidError } from "../../common/errors.js";

const dir = mkdtempSync(join(tmpdir(), "noid-sshkey-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
function keygen(type: string, bits?: number): { line: string; fp: string } {
  const f = join(dir, `k${n++}-${type}`);
  execFileSync("ssh-keygen", ["-q", "-t", type, ...(bits ? ["-b", String(bits)] : []), "-N", "", "-C", "alice@laptop", "-f", f]);
  const fp = execFileSync("ssh-keygen", ["-l", "-E", "sha256", "-f", `${f}.pub`], { encoding: "utf8" }).split(" ")[1]!;
  return { line: readFileSync(`${f}.pub`, "utf8"), fp };
}

function field(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    if (isNoidError(e, "INVALID_ARGUMENT")) return e.message;
    throw e;
  }
  throw new Error("expected INVALID_ARGUMENT");
}

describe("parseSshKey", () => {
  it.each([
    ["ed25519", undefined, "ssh-ed25519"],
    ["rsa", 2048, "ssh-rsa"],
    ["ecdsa", 256, "ecdsa-sha2-nistp256"],
    ["ecdsa", 384, "ecdsa-sha2-nistp384"],
    ["ecdsa", 521, "ecdsa-sha2-nistp521"],
  ] as const)("accepts a %s key and fingerprints it like ssh-keygen", (type, bits, want) => {
    const k = keygen(type, bits);
    const p = parseSshKey("public_key", k.line);
    expect(p.type).toBe(want);
    expect(p.comment).toBe("alice@laptop");
    expect(p.fingerprint).toBe(k.fp);
    expect(fingerprintId(p.fingerprint)).toBe(p.id);
    expect(p.line).toBe(k.line.trim());
  });

  it("refuses bad keys with INVALID_ARGUMENT naming the field", () => {
    const ed = keygen("ed25519").line.trim().split(" ");
    const rsa1024 = keygen("rsa", 1024).line;
    expect(field(() => parseSshKey("public_key", ""))).toMatch(/^public_key: is required/);
    expect(field(() => parseSshKey("public_key", "ssh-dss AAAAB3 x"))).toMatch(/^public_key: unsupported key type/);
    expect(field(() => parseSshKey("public_key", "ssh-ed25519 !!!"))).toMatch(/not base64/);
    expect(field(() => parseSshKey("public_key", `ssh-rsa ${ed[1]}`))).toMatch(/is for "ssh-ed25519"/);
    expect(field(() => parseSshKey("public_key", `ssh-ed25519 ${ed[1]!.slice(0, 40)}`))).toMatch(/public_key/);
    expect(field(() => parseSshKey("public_key", rsa1024))).toMatch(/at least 2048 bits/);
    expect(field(() => parseSshKey("public_key", `${ed[0]} ${ed[1]}\nssh-ed25519 ${ed[1]}`))).toMatch(/one line/);
    expect(fingerprintId("MD5:aa:bb")).toBeUndefined();
  });
});
