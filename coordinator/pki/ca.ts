// The cluster CA: created on the coordinator's first start in <state_dir>/pki
// (keys 0600), reused afterwards. It signs the coordinator's own server
// certificate (unless the operator configured one) and the agents' client
// certificates, from CSRs whose keys never leave the hosts.
import { randomBytes } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { isIP } from "node:net";
import { join } from "node:path";
import { NoidError, invalid } from "../../common/errors.js";
import { isDnsLabel } from "../../common/names.js";
import { SIGN_ALG, generateKeyPair, keyPairFromPem, privateKeyToPem, x509 } from "../../common/x509.js";

/** Organizational units that tell what a certificate of the cluster CA is for. */
export const HOST_OU = "noid-host";
export const SERVER_OU = "noid-coordinator";

const DAY_MS = 86_400_000;
const CA_VALIDITY_MS = 10 * 365 * DAY_MS;
const SERVER_VALIDITY_MS = 365 * DAY_MS;
/** A server certificate this close to its end is replaced at start. */
const SERVER_RENEW_BEFORE_MS = 30 * DAY_MS;
/** Tolerates clocks a little behind ours. */
const BACKDATE_MS = 5 * 60_000;

export const PKI_FILES = { caCert: "ca.crt", caKey: "ca.key", serverCert: "server.crt", serverKey: "server.key" } as const;

/** A positive 128-bit serial, as lower-case hex. */
export function newSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString("hex");
}

function writeSecret(path: string, data: string): void {
  writeFileSync(path, data, { mode: 0o600 });
  chmodSync(path, 0o600);
}

export interface IssuedCert {
  certPem: string;
  serial: string;
  notAfter: Date;
}

export class ClusterCa {
  readonly cert: x509.X509Certificate;

  private constructor(
    readonly certPem: string,
    private readonly keys: CryptoKeyPair,
    private readonly now: () => Date,
  ) {
    this.cert = new x509.X509Certificate(certPem);
  }

  static async create(now: () => Date = () => new Date()): Promise<{ ca: ClusterCa; keyPem: string }> {
    const keys = await generateKeyPair();
    const t = now().getTime();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: newSerial(),
      name: `CN=noid cluster CA ${randomBytes(4).toString("hex")}, O=noid`,
      notBefore: new Date(t - BACKDATE_MS),
      notAfter: new Date(t + CA_VALIDITY_MS),
      signingAlgorithm: SIGN_ALG,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    return { ca: new ClusterCa(cert.toString("pem"), keys, now), keyPem: await privateKeyToPem(keys.privateKey) };
  }

  static async load(certPem: string, keyPem: string, now: () => Date = () => new Date()): Promise<ClusterCa> {
    return new ClusterCa(certPem, await keyPairFromPem(keyPem), now);
  }

  private async issue(o: {
    subject: string;
    publicKey: CryptoKey | x509.PublicKey;
    validityMs: number;
    sans: x509.JsonGeneralNames;
    usage: x509.ExtendedKeyUsageType[];
  }): Promise<IssuedCert> {
    const t = this.now().getTime();
    const serial = newSerial();
    const pub = o.publicKey instanceof x509.PublicKey ? await o.publicKey.export() : o.publicKey;
    const notAfter = new Date(Math.min(t + o.validityMs, this.cert.notAfter.getTime()));
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: serial,
      subject: o.subject,
      issuer: this.cert.subject,
      notBefore: new Date(t - BACKDATE_MS),
      notAfter,
      signingAlgorithm: SIGN_ALG,
      publicKey: pub,
      signingKey: this.keys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension(o.usage, false),
        new x509.SubjectAlternativeNameExtension(o.sans, false),
        await x509.AuthorityKeyIdentifierExtension.create(this.keys.publicKey),
      ],
    });
    return { certPem: cert.toString("pem"), serial, notAfter };
  }

  /** The coordinator's server certificate for these DNS names and IP addresses. */
  async issueServer(sans: readonly string[], publicKey: CryptoKey): Promise<IssuedCert> {
    return this.issue({
      subject: `CN=noid coordinator, OU=${SERVER_OU}, O=noid`,
      publicKey,
      validityMs: SERVER_VALIDITY_MS,
      sans: sans.map((s) => (isIP(s) ? { type: "ip" as const, value: s } : { type: "dns" as const, value: s })),
      usage: [x509.ExtendedKeyUsage.serverAuth],
    });
  }

  /**
   * Signs a host's CSR. The CSR's own signature must verify (the host holds
   * the key); its subject is ignored: the certificate names `hostName`, the
   * identity the coordinator decided (from the join token or the old cert).
   */
  async signHostCsr(csrPem: string, hostName: string, validitySeconds: number): Promise<IssuedCert> {
    if (!isDnsLabel(hostName)) throw invalid("name", `"${hostName}" is not a host name`);
    const csr = await checkCsr(csrPem);
    return this.issue({
      subject: `CN=${hostName}, OU=${HOST_OU}, O=noid`,
      publicKey: csr.publicKey,
      validityMs: validitySeconds * 1000,
      sans: [{ type: "dns", value: hostName }],
      usage: [x509.ExtendedKeyUsage.clientAuth],
    });
  }
}

/** Parses a CSR and checks its key type and self-signature (proof the requester holds the key). */
export async function checkCsr(csrPem: string): Promise<x509.Pkcs10CertificateRequest> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(csrPem);
  } catch (e) {
    throw invalid("csr", `not a PEM certificate signing request (${(e as Error).message})`);
  }
  const alg = csr.publicKey.algorithm as EcKeyAlgorithm;
  if (alg.name !== "ECDSA" || alg.namedCurve !== "P-256") throw invalid("csr", "the key must be EC P-256");
  let verified = false;
  try {
    verified = await csr.verify();
  } catch (e) {
    throw invalid("csr", `its key or signature is malformed (${(e as Error).message})`);
  }
  if (!verified) throw invalid("csr", "its signature does not verify");
  return csr;
}

export interface ClusterPki {
  ca: ClusterCa;
  /** The server certificate chain (server cert, then the CA) and key presented by the coordinator. */
  serverCertPem: string;
  serverKeyPem: string;
  /** False when the operator configured tls_cert/tls_key. */
  generatedServerCert: boolean;
}

/** The names a generated server certificate must carry: the configured ones plus loopback. */
export function serverSans(configured: readonly string[]): string[] {
  return [...new Set([...configured, "localhost", "127.0.0.1", "::1"])];
}

function sansOf(pem: string): Set<string> {
  const ext = new x509.X509Certificate(pem).getExtension(x509.SubjectAlternativeNameExtension);
  return new Set((ext?.names.toJSON() ?? []).map((n) => n.value));
}

/**
 * Loads <dir>/ca.{crt,key} or creates them; then the server certificate:
 * the configured files if given, else <dir>/server.{crt,key}, (re)issued when
 * missing, lacking a wanted name, or near its end.
 */
export async function loadOrCreatePki(o: {
  dir: string;
  sans: readonly string[];
  tlsCert?: string;
  tlsKey?: string;
  now?: () => Date;
  onCreate?: (what: string, path: string) => void;
}): Promise<ClusterPki> {
  const now = o.now ?? (() => new Date());
  mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const p = (f: string) => join(o.dir, f);
  let ca: ClusterCa;
  if (existsSync(p(PKI_FILES.caCert)) && existsSync(p(PKI_FILES.caKey))) {
    ca = await ClusterCa.load(readFileSync(p(PKI_FILES.caCert), "utf8"), readFileSync(p(PKI_FILES.caKey), "utf8"), now);
  } else if (existsSync(p(PKI_FILES.caCert)) || existsSync(p(PKI_FILES.caKey))) {
    throw new NoidError("FAILED_PRECONDITION", `${o.dir} holds only half of the cluster CA (${PKI_FILES.caCert}/${PKI_FILES.caKey}); restore the other file or remove both`);
  } else {
    const created = await ClusterCa.create(now);
    ca = created.ca;
    writeSecret(p(PKI_FILES.caKey), created.keyPem);
    writeFileSync(p(PKI_FILES.caCert), ca.certPem, { mode: 0o644 });
    o.onCreate?.("cluster CA", p(PKI_FILES.caCert));
  }

  if (o.tlsCert && o.tlsKey) {
    return { ca, serverCertPem: readFileSync(o.tlsCert, "utf8"), serverKeyPem: readFileSync(o.tlsKey, "utf8"), generatedServerCert: false };
  }
  const wanted = serverSans(o.sans);
  const certFile = p(PKI_FILES.serverCert);
  const keyFile = p(PKI_FILES.serverKey);
  if (existsSync(certFile) && existsSync(keyFile)) {
    const pem = readFileSync(certFile, "utf8");
    const leaf = new x509.X509Certificate(pem);
    const have = sansOf(pem);
    const fresh = leaf.notAfter.getTime() - now().getTime() > SERVER_RENEW_BEFORE_MS;
    const signedByUs = leaf.issuer === ca.cert.subject && (await leaf.verify({ publicKey: ca.cert.publicKey, signatureOnly: true }));
    if (fresh && signedByUs && wanted.every((s) => have.has(s))) {
      return { ca, serverCertPem: pem, serverKeyPem: readFileSync(keyFile, "utf8"), generatedServerCert: true };
    }
  }
  const keys = await generateKeyPair();
  const issued = await ca.issueServer(wanted, keys.publicKey);
  const keyPem = await privateKeyToPem(keys.privateKey);
  const chain = issued.certPem.trimEnd() + "\n" + ca.certPem.trimEnd() + "\n";
  writeSecret(keyFile, keyPem);
  writeFileSync(certFile, chain, { mode: 0o644 });
  o.onCreate?.("server certificate", certFile);
  return { ca, serverCertPem: chain, serverKeyPem: keyPem, generatedServerCert: true };
}
