// X.509 helpers shared by the coordinator (cluster CA), the agent (its CSR)
// and the CLI/SDK (CA pinning): EC P-256 keys from WebCrypto, PEM in and out,
// SHA-256 fingerprints. All certificate work uses @peculiar/x509 on Node's
// WebCrypto.
import "reflect-metadata";
import { createHash, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { NoidError } from "./errors.js";

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };

export const EC_ALG = { name: "ECDSA", namedCurve: "P-256" } as const;
export const SIGN_ALG = { name: "ECDSA", hash: "SHA-256" } as const;

export async function generateKeyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey(EC_ALG, true, ["sign", "verify"])) as CryptoKeyPair;
}

export async function privateKeyToPem(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await webcrypto.subtle.exportKey("pkcs8", key));
  return x509.PemConverter.encode(der, "PRIVATE KEY");
}

/** Imports a PKCS#8 EC P-256 private key and derives its public half. */
export async function keyPairFromPem(pem: string): Promise<CryptoKeyPair> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new NoidError("INVALID_ARGUMENT", "no PEM block in private key");
  const privateKey = await webcrypto.subtle.importKey("pkcs8", der, EC_ALG, true, ["sign"]);
  const jwk = await webcrypto.subtle.exportKey("jwk", privateKey);
  delete jwk.d;
  jwk.key_ops = ["verify"];
  const publicKey = await webcrypto.subtle.importKey("jwk", jwk, EC_ALG, true, ["verify"]);
  return { privateKey, publicKey } as CryptoKeyPair;
}

/** "sha256:<64 hex>" of a certificate's DER encoding (PEM or DER in). */
export function certFingerprint(cert: string | Uint8Array): string {
  const der = typeof cert === "string" ? Buffer.from(x509.PemConverter.decode(cert)[0] ?? new ArrayBuffer(0)) : Buffer.from(cert);
  if (der.length === 0) throw new NoidError("INVALID_ARGUMENT", "no certificate in PEM");
  return `sha256:${createHash("sha256").update(der).digest("hex")}`;
}

/** Accepts "sha256:<hex>", bare hex, or hex with colons; returns the canonical "sha256:<hex>" or undefined. */
export function normalizeFingerprint(s: string): string | undefined {
  const hex = s.trim().toLowerCase().replace(/^sha256:/, "").replace(/:/g, "");
  return /^[0-9a-f]{64}$/.test(hex) ? `sha256:${hex}` : undefined;
}

export function derToPem(der: Uint8Array, label = "CERTIFICATE"): string {
  return x509.PemConverter.encode(Buffer.from(der), label);
}

/** A certificate signing request for a host: CN and DNS SAN = name, signed with the host's key. */
export async function createHostCsr(name: string, keys: CryptoKeyPair): Promise<string> {
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: `CN=${name}`,
    keys,
    signingAlgorithm: SIGN_ALG,
    extensions: [new x509.SubjectAlternativeNameExtension([{ type: "dns", value: name }])],
  });
  return csr.toString("pem");
}

/** Validity window of a PEM certificate. */
export function certValidity(pem: string): { notBefore: Date; notAfter: Date; serial: string; subject: string } {
  const c = new x509.X509Certificate(pem);
  return { notBefore: c.notBefore, notAfter: c.notAfter, serial: c.serialNumber.toLowerCase(), subject: c.subject };
}
