// The cluster CA: files and modes, reuse on restart, server certificate
// names, and host CSR signing (identity from the CA, not from the CSR).
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { ClusterCa, HOST_OU, PKI_FILES, loadOrCreatePki } from "../../coordinator/pki/ca.js";
import { certFingerprint, createHostCsr, generateKeyPair, normalizeFingerprint } from "../../common/x509.js";

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), "noid-pki-"));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe("cluster PKI", () => {
  it("creates a CA and a server certificate with 0600 keys, and reuses them on restart", async () => {
    const dir = tmp();
    const a = await loadOrCreatePki({ dir, sans: ["noid.example.com", "10.1.2.3"] });
    expect(statSync(join(dir, PKI_FILES.caKey)).mode & 0o777).toBe(0o600);
    expect(statSync(join(dir, PKI_FILES.serverKey)).mode & 0o777).toBe(0o600);
    const leaf = new X509Certificate(a.serverCertPem);
    const ca = new X509Certificate(a.ca.certPem);
    expect(leaf.verify(ca.publicKey)).toBe(true);
    expect(ca.ca).toBe(true);
    expect(leaf.ca).toBe(false);
    for (const n of ["DNS:noid.example.com", "IP Address:10.1.2.3", "DNS:localhost", "IP Address:127.0.0.1"]) expect(leaf.subjectAltName).toContain(n);
    expect(leaf.checkHost("noid.example.com")).toBe("noid.example.com");

    const b = await loadOrCreatePki({ dir, sans: ["noid.example.com"] });
    expect(b.ca.certPem).toBe(a.ca.certPem);
    expect(b.serverCertPem).toBe(a.serverCertPem);
    // A new name: same CA, a new server certificate carrying it.
    const c = await loadOrCreatePki({ dir, sans: ["other.example.com"] });
    expect(c.ca.certPem).toBe(a.ca.certPem);
    expect(new X509Certificate(c.serverCertPem).subjectAltName).toContain("DNS:other.example.com");
  });

  it("uses configured server certificate files as they are, still with a cluster CA for agents", async () => {
    const dir = tmp();
    const gen = await loadOrCreatePki({ dir: join(dir, "a"), sans: [] });
    const { writeFileSync } = await import("node:fs");
    writeFileSync(join(dir, "c.pem"), gen.serverCertPem);
    writeFileSync(join(dir, "k.pem"), gen.serverKeyPem);
    const p = await loadOrCreatePki({ dir: join(dir, "b"), sans: [], tlsCert: join(dir, "c.pem"), tlsKey: join(dir, "k.pem") });
    expect(p.generatedServerCert).toBe(false);
    expect(p.serverCertPem).toBe(gen.serverCertPem);
    expect(p.ca.certPem).not.toBe(gen.ca.certPem);
  });

  it("refuses half a CA instead of silently replacing it", async () => {
    const dir = tmp();
    await loadOrCreatePki({ dir, sans: [] });
    rmSync(join(dir, PKI_FILES.caKey));
    await expect(loadOrCreatePki({ dir, sans: [] })).rejects.toThrow(/half of the cluster CA/);
  });

  it("signs a host CSR for the name it is told, short-lived, for client auth only", async () => {
    const { ca } = await ClusterCa.create();
    const keys = await generateKeyPair();
    const csr = await createHostCsr("mallory", keys); // the CSR asks for another name
    const issued = await ca.signHostCsr(csr, "h1", 3600);
    const cert = new X509Certificate(issued.certPem);
    expect(cert.verify(new X509Certificate(ca.certPem).publicKey)).toBe(true);
    expect(cert.subject).toContain("CN=h1");
    expect(cert.subject).toContain(`OU=${HOST_OU}`);
    expect(cert.subjectAltName).toBe("DNS:h1");
    expect(cert.keyUsage).toEqual(["1.3.6.1.5.5.7.3.2"]);
    const life = new Date(cert.validTo).getTime() - Date.now();
    expect(life).toBeGreaterThan(3500_000);
    expect(life).toBeLessThanOrEqual(3600_000);
    expect(issued.serial).toBe(cert.serialNumber.toLowerCase());
  });

  it("refuses a CSR whose signature does not verify, or that is not a CSR", async () => {
    const { ca } = await ClusterCa.create();
    const csr = await createHostCsr("h1", await generateKeyPair());
    const lines = csr.split("\n");
    const body = lines[3]!;
    lines[3] = body.slice(0, 10) + (body[10] === "A" ? "B" : "A") + body.slice(11);
    await expect(ca.signHostCsr(lines.join("\n"), "h1", 60)).rejects.toThrow(/csr/);
    await expect(ca.signHostCsr("not a csr", "h1", 60)).rejects.toThrow(/csr/);
    await expect(ca.signHostCsr(csr, "Bad_Name", 60)).rejects.toThrow(/name/);
  });

  it("fingerprints certificates as sha256 of the DER and normalizes typed fingerprints", async () => {
    const { ca } = await ClusterCa.create();
    const fp = certFingerprint(ca.certPem);
    expect(fp).toBe(`sha256:${new X509Certificate(ca.certPem).fingerprint256.replace(/:/g, "").toLowerCase()}`);
    expect(normalizeFingerprint(new X509Certificate(ca.certPem).fingerprint256)).toBe(fp);
    expect(normalizeFingerprint(fp.toUpperCase())).toBe(fp);
    expect(normalizeFingerprint("sha256:abc")).toBeUndefined();
  });
});

describe("agent certificate renewal timing", async () => {
  const { renewAt, retryDelayMs } = await import("../../agent/identity.js");
  it("renews at 2/3 of the lifetime counted from when the certificate was obtained", () => {
    const t0 = new Date("2026-01-01T00:00:00Z");
    const end = new Date(t0.getTime() + 24 * 3600_000);
    // notBefore backdated 5 minutes by the issuer: counted from receipt, not from notBefore.
    expect(renewAt(new Date(t0.getTime() - 300_000), end, t0).toISOString()).toBe("2026-01-01T16:00:00.000Z");
    // Loaded after a restart 12 h in: 2/3 of what is left.
    expect(renewAt(new Date(t0.getTime() - 300_000), end, new Date(t0.getTime() + 12 * 3600_000)).toISOString()).toBe("2026-01-01T20:00:00.000Z");
  });
  it("retries a failed renewal within a tenth of what is left, between 1 s and 1 min", () => {
    const now = new Date("2026-01-01T00:00:00Z");
    expect(retryDelayMs(now, new Date(now.getTime() + 3600_000))).toBe(60_000);
    expect(retryDelayMs(now, new Date(now.getTime() + 100_000))).toBe(10_000);
    expect(retryDelayMs(now, new Date(now.getTime() + 500))).toBe(1000);
  });
});

describe("noidctl CA pinning decision", async () => {
  const { pinDecision } = await import("../../cli/commands/auth.js");
  const fp = `sha256:${"ab".repeat(32)}`;
  it("pins on a matching fingerprint, in any common notation", () => {
    expect(pinDecision(fp, fp, undefined)).toEqual({ pin: true });
    expect(pinDecision(fp, "AB:".repeat(31) + "AB", undefined)).toEqual({ pin: true });
  });
  it("refuses a different fingerprint even if a human said yes, and refuses without anyone to ask", () => {
    const d = pinDecision(fp, `sha256:${"cd".repeat(32)}`, true);
    expect(d.pin).toBe(false);
    expect(pinDecision(fp, undefined, undefined)).toMatchObject({ pin: false });
    expect(pinDecision(fp, undefined, false)).toMatchObject({ pin: false });
    expect(pinDecision(fp, undefined, true)).toEqual({ pin: true });
    expect(() => pinDecision(fp, "sha256:xyz", undefined)).toThrow(/ca-fingerprint/);
  });
});

describe("noidctl plaintext warning", async () => {
  const { isLocalAddress } = await import("../../cli/app.js");
  it("treats only unix sockets and loopback as local", () => {
    for (const a of ["unix:/run/noid.sock", "127.0.0.1:7654", "localhost:7654", "[::1]:7654"]) expect(isLocalAddress(a), a).toBe(true);
    for (const a of ["10.0.0.1:7654", "noid.example.com:7654", "[fe80::1]:7654", "127x.example.com:1"]) expect(isLocalAddress(a), a).toBe(false);
  });
});
