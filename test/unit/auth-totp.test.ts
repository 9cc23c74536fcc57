// TOTP against RFC 6238 Appendix B's vectors (and HOTP against RFC 4226 Appendix D).
import { describe, expect, it } from "vitest";
import { base32Decode, base32Encode, hotp, newTotpSecret, otpauthUri, totp, verifyTotp, type TotpParams } from "../../coordinator/users/totp.js";

const SEED1 = Buffer.from("12345678901234567890");
const SEED256 = Buffer.from("12345678901234567890123456789012");
const SEED512 = Buffer.from("1234567890123456789012345678901234567890123456789012345678901234");

// [unix seconds, sha1, sha256, sha512], 8 digits, 30 s steps.
const RFC6238: [number, string, string, string][] = [
  [59, "94287082", "46119246", "90693936"],
  [1111111109, "07081804", "68084774", "25091201"],
  [1111111111, "14050471", "67062674", "99943326"],
  [1234567890, "89005924", "91819424", "93441116"],
  [2000000000, "69279037", "90698825", "38618901"],
  [20000000000, "65353130", "77737706", "47863826"],
];

const p = (algorithm: TotpParams["algorithm"]): TotpParams => ({ stepSeconds: 30, digits: 8, algorithm });

describe("TOTP (RFC 6238)", () => {
  it.each(RFC6238)("at %i s gives the RFC's codes for SHA-1, SHA-256 and SHA-512", (t, s1, s256, s512) => {
    expect(totp(SEED1, t * 1000, p("sha1"))).toBe(s1);
    expect(totp(SEED256, t * 1000, p("sha256"))).toBe(s256);
    expect(totp(SEED512, t * 1000, p("sha512"))).toBe(s512);
  });

  it("matches RFC 4226's HOTP values", () => {
    const want = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];
    expect(want.map((_, i) => hotp(SEED1, i, 6))).toEqual(want);
  });

  it("accepts the current code and one step of drift, returns the step, and refuses others", () => {
    const t = 1_700_000_000_000;
    const code = totp(SEED1, t);
    const step = Math.floor(t / 30_000);
    expect(verifyTotp(SEED1, code, t)).toBe(step);
    expect(verifyTotp(SEED1, code, t + 30_000)).toBe(step);
    expect(verifyTotp(SEED1, code, t + 90_000)).toBeUndefined();
    expect(verifyTotp(SEED1, "12345", t)).toBeUndefined();
    expect(verifyTotp(SEED1, "abcdef", t)).toBeUndefined();
  });

  it("round-trips base32 (RFC 4648 vectors) and makes 160-bit secrets and otpauth URIs", () => {
    expect(base32Encode(Buffer.from("foobar"))).toBe("MZXW6YTBOI");
    expect(base32Decode("MZXW6YTBOI======")?.toString()).toBe("foobar");
    expect(base32Decode("mzxw 6ytb oi")?.toString()).toBe("foobar");
    expect(base32Decode("not*base32")).toBeUndefined();
    const s = newTotpSecret();
    expect(s).toMatch(/^[A-Z2-7]{32}$/);
    expect(base32Decode(s)?.length).toBe(20);
    expect(otpauthUri("noid", "alice", s)).toBe(`otpauth://totp/noid:alice?secret=${s}&issuer=noid&algorithm=SHA1&digits=6&period=30`);
  });
});
