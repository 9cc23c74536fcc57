// Trust on first use of a coordinator's CA: fetch the certificate chain the
// server presents (without verifying it: we have nothing to verify it
// against yet), take its root, and let the caller compare the fingerprint
// with one obtained out of band (or show it to a human). After that, every
// connection verifies the server against the pinned CA (TlsOptions.caPem).
import { createHash, X509Certificate } from "node:crypto";
import { connect as tlsConnect, type DetailedPeerCertificate, type TLSSocket } from "node:tls";
import { parseAddress } from "./channel.js";
import { NoidApiError } from "./errors.js";

export interface FetchedCa {
  /** The CA certificate, PEM. */
  pem: string;
  /** "sha256:<hex>" of its DER encoding. */
  fingerprint: string;
  subject: string;
}

export function fingerprintOf(der: Buffer): string {
  return `sha256:${createHash("sha256").update(der).digest("hex")}`;
}

/** Accepts "sha256:<hex>", bare hex, or colon-separated hex; returns "sha256:<hex>" or undefined. */
export function normalizeFingerprint(s: string): string | undefined {
  const hex = s.trim().toLowerCase().replace(/^sha256:/, "").replace(/:/g, "");
  return /^[0-9a-f]{64}$/.test(hex) ? `sha256:${hex}` : undefined;
}

function toPem(der: Buffer): string {
  const b64 = der.toString("base64").replace(/.{64}/g, "$&\n");
  return `-----BEGIN CERTIFICATE-----\n${b64.replace(/\n$/, "")}\n-----END CERTIFICATE-----\n`;
}

/** The top of the chain the server presented: the self-signed root if it sent one, else the last issuer it sent. */
function topOfChain(leaf: DetailedPeerCertificate): DetailedPeerCertificate {
  let c = leaf;
  const seen = new Set<string>();
  while (c.issuerCertificate && c.issuerCertificate !== c && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    c = c.issuerCertificate;
  }
  return c;
}

/** Connects with TLS to `address` ("host:port" or "unix:/path") and returns the CA at the top of the server's chain. */
export function fetchServerCa(address: string, timeoutMs = 10_000): Promise<FetchedCa> {
  const target = parseAddress(address);
  return new Promise((resolve, reject) => {
    let socket: TLSSocket;
    const common = { rejectUnauthorized: false, ALPNProtocols: ["h2"], minVersion: "TLSv1.2" as const };
    if (target.startsWith("unix:")) socket = tlsConnect({ ...common, path: target.slice("unix:".length) });
    else {
      const i = target.lastIndexOf(":");
      const host = target.slice(0, i).replace(/^\[|\]$/g, "");
      socket = tlsConnect({ ...common, host, port: Number(target.slice(i + 1)), ...(/^[\d.]+$|:/.test(host) ? {} : { servername: host }) });
    }
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new NoidApiError("UNAVAILABLE", `fetching the CA of ${address}: timed out`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      const leaf = socket.getPeerCertificate(true);
      socket.end();
      if (!leaf || !leaf.raw) return reject(new NoidApiError("UNAVAILABLE", `${address} presented no certificate`));
      const top = topOfChain(leaf);
      const pem = toPem(top.raw);
      resolve({ pem, fingerprint: fingerprintOf(top.raw), subject: new X509Certificate(top.raw).subject.replace(/\n/g, ", ") });
    });
    socket.once("error", (e) => {
      clearTimeout(timer);
      reject(new NoidApiError("UNAVAILABLE", `fetching the CA of ${address}: ${e.message} (is it serving TLS?)`, { cause: e }));
    });
  });
}
