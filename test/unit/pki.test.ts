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
