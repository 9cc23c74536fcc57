// The agent's identity with a TLS coordinator: the CA it trusts the
// coordinator by, and its host certificate. On first start it joins: a key
// generated here (it never leaves the host), a CSR and a one-time join token
// go to JoinHost, and the certificate that comes back is stored next to the
// key in <state_dir>/pki. Afterwards the certificate is the credential
// (mTLS), renewed at 2/3 of its lifetime with a fresh key; a renewal makes
// a new client for new connections and leaves the open session alone.
import { coordinatorTarget } from "../sdk/targets.js";
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { connect as tlsConnect, type DetailedPeerCertificate } from "node:tls";
import { join } from "node:path";
import { credentials, Metadata, type ServiceError } from "@grpc/grpc-js";
import { AgentServiceClient } from "../gen/noid/v1/agent.js";
import { NoidError } from "../common/errors.js";
import type { Logger } from "../common/logger.js";
import { certFingerprint, certValidity, createHostCsr, derToPem, generateKeyPair, normalizeFingerprint, privateKeyToPem } from "../common/x509.js";

export const AGENT_PKI_FILES = { ca: "ca.crt", cert: "host.crt", key: "host.key" } as const;

export const CHANNEL_OPTIONS = {
  "grpc.keepalive_time_ms": 20_000,
  "grpc.keepalive_timeout_ms": 10_000,
  "grpc.keepalive_permit_without_calls": 1,
} as const;

/**
 * When to renew a certificate valid until `notAfter` that we hold since
 * `since`: at 2/3 of its lifetime. The issuer backdates notBefore a little
 * for clock skew, so the lifetime counts from when we got it (or, after a
 * restart, from when we loaded it: 2/3 of what is left).
 */
export function renewAt(notBefore: Date, notAfter: Date, since: Date): Date {
  const a = Math.max(notBefore.getTime(), since.getTime());
  return new Date(a + ((notAfter.getTime() - a) * 2) / 3);
}

/** After a failed renewal: try again soon, but well before the end. */
export function retryDelayMs(now: Date, notAfter: Date): number {
  const left = notAfter.getTime() - now.getTime();
  return Math.max(1000, Math.min(60_000, Math.floor(left / 10)));
}

function writeAtomic(path: string, data: string, mode: number): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

function unary<Req, Res>(f: (req: Req, md: Metadata, opts: { deadline: Date }, cb: (e: ServiceError | null, r?: Res) => void) => unknown, req: Req): Promise<Res> {
  return new Promise((resolve, reject) =>
    f(req, new Metadata(), { deadline: new Date(Date.now() + 15_000) }, (e, r) => (e ? reject(e) : resolve(r!))),
  );
}

/** The CA at the top of the chain `address` presents (trust on first use; the caller checks the fingerprint). */
export function fetchCaPem(address: string, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const common = { rejectUnauthorized: false, ALPNProtocols: ["h2"], minVersion: "TLSv1.2" as const };
    let socket;
    if (address.startsWith("unix:")) socket = tlsConnect({ ...common, path: address.slice(5) });
    else {
      const i = address.lastIndexOf(":");
      const host = address.slice(0, i).replace(/^\[|\]$/g, "");
      socket = tlsConnect({ ...common, host, port: Number(address.slice(i + 1)) });
    }
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new NoidError("UNAVAILABLE", `fetching the CA of ${address}: timed out`));
    }, timeoutMs);
    socket.once("secureConnect", () => {
      clearTimeout(timer);
      let c: DetailedPeerCertificate = socket.getPeerCertificate(true);
      socket.end();
      const seen = new Set<string>();
      while (c.issuerCertificate && c.issuerCertificate !== c && !seen.has(c.fingerprint256)) {
        seen.add(c.fingerprint256);
        c = c.issuerCertificate;
      }
      if (!c.raw) return reject(new NoidError("UNAVAILABLE", `${address} presented no certificate`));
      resolve(derToPem(c.raw));
    });
    socket.once("error", (e) => {
      clearTimeout(timer);
      reject(new NoidError("UNAVAILABLE", `fetching the CA of ${address}: ${e.message}`, { cause: e }));
    });
  });
}

export interface IdentityOptions {
  coordinator: string;
  name: string;
  stateDir: string;
  caFile?: string;
  caFingerprint?: string;
  joinTokenFile?: string;
  logger: Logger;
  /** Called with a client that uses the renewed certificate. */
  onRenewed?: (client: AgentServiceClient) => void;
}

export class HostIdentity {
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  private client!: AgentServiceClient;
  private caPem = "";
  private certPem = "";
  private keyPem = "";
  private readonly dir: string;
  /** When the certificate in use was obtained or loaded. */
  private since = new Date();

  constructor(private readonly o: IdentityOptions) {
    this.dir = join(o.stateDir, "pki");
  }

  private path(f: keyof typeof AGENT_PKI_FILES): string {
    return join(this.dir, AGENT_PKI_FILES[f]);
  }

  /** The certificate in use (PEM). */
  get certificate(): string {
    return this.certPem;
  }

  /** The CA the coordinator is checked against: --ca-file, else the one pinned at join, else fetched and checked against --ca-fingerprint. */
  private async trustRoot(): Promise<string> {
    if (this.o.caFile) return readFileSync(this.o.caFile, "utf8");
    if (existsSync(this.path("ca"))) return readFileSync(this.path("ca"), "utf8");
    if (!this.o.caFingerprint) {
      throw new NoidError("INVALID_ARGUMENT", "the coordinator's CA is not known yet: give --ca-file or --ca-fingerprint (printed by noidctl host join-token)");
    }
    const want = normalizeFingerprint(this.o.caFingerprint);
    if (!want) throw new NoidError("INVALID_ARGUMENT", "ca_fingerprint must be sha256:<64 hex>");
    const pem = await fetchCaPem(coordinatorTarget(this.o.coordinator).addresses[0]!);
    const got = certFingerprint(pem);
    if (got !== want) throw new NoidError("PERMISSION_DENIED", `the coordinator's CA is ${got}, not ${want}: refusing to join`);
    return pem;
  }

  private makeClient(): AgentServiceClient {
    const t = coordinatorTarget(this.o.coordinator);
    return new AgentServiceClient(
      t.target,
      credentials.createSsl(Buffer.from(this.caPem), Buffer.from(this.keyPem), Buffer.from(this.certPem)),
      { ...CHANNEL_OPTIONS, ...t.options },
    );
  }

  /** Loads the stored certificate or joins; returns an mTLS client. */
  async start(): Promise<AgentServiceClient> {
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.caPem = await this.trustRoot();
    const stored = existsSync(this.path("cert")) && existsSync(this.path("key"));
    const usable = stored && this.usableStored();
    if (usable) {
      this.certPem = readFileSync(this.path("cert"), "utf8");
      this.keyPem = readFileSync(this.path("key"), "utf8");
      this.since = new Date();
      this.o.logger.info({ notAfter: certValidity(this.certPem).notAfter }, "using the stored host certificate");
    } else {
      if (!this.o.joinTokenFile) {
        throw new NoidError(
          "FAILED_PRECONDITION",
          stored
            ? "the stored host certificate has expired or names another host: join again with a new join token (--join-token-file)"
            : "this host has no certificate yet: join with --join-token-file (noidctl host join-token)",
        );
      }
      await this.join(this.readJoinToken());
    }
    this.client = this.makeClient();
    this.schedule();
    return this.client;
  }

  private usableStored(): boolean {
    const v = certValidity(readFileSync(this.path("cert"), "utf8"));
    return v.notAfter.getTime() > Date.now() && v.subject.split(/,\s*/).includes(`CN=${this.o.name}`);
  }

  private readJoinToken(): string {
    const t = readFileSync(this.o.joinTokenFile!, "utf8").trim();
    if (!/^[0-9a-f]{64}$/.test(t)) throw new NoidError("INVALID_ARGUMENT", `join token file ${this.o.joinTokenFile} does not hold a join token`);
    return t;
  }

  private async join(token: string): Promise<void> {
    const keys = await generateKeyPair();
    const csrPem = await createHostCsr(this.o.name, keys);
    const t = coordinatorTarget(this.o.coordinator);
    const anon = new AgentServiceClient(t.target, credentials.createSsl(Buffer.from(this.caPem)), { ...CHANNEL_OPTIONS, ...t.options });
    try {
      const res = await unary(anon.joinHost.bind(anon), { joinToken: token, name: this.o.name, csrPem });
      await this.store(res.certificatePem, await privateKeyToPem(keys.privateKey), res.caPem);
      this.o.logger.info({ notAfter: res.notAfter }, "joined the cluster: host certificate stored");
    } finally {
      anon.close();
    }
  }

  private async store(certPem: string, keyPem: string, clusterCaPem: string): Promise<void> {
    // The key first: a certificate without its key would be useless after a crash.
    writeAtomic(this.path("key"), keyPem, 0o600);
    writeAtomic(this.path("cert"), certPem, 0o644);
    // Pin the CA we verified the coordinator with (--ca-file or fingerprint) for later starts.
    if (!existsSync(this.path("ca"))) writeAtomic(this.path("ca"), this.caPem, 0o644);
    if (clusterCaPem && certFingerprint(clusterCaPem) !== certFingerprint(this.caPem)) {
      writeAtomic(join(this.dir, "cluster-ca.crt"), clusterCaPem, 0o644);
    }
    this.certPem = certPem;
    this.keyPem = keyPem;
    this.since = new Date();
  }

  private schedule(delayMs?: number): void {
    if (this.stopped) return;
    const v = certValidity(this.certPem);
    const ms = delayMs ?? Math.max(0, renewAt(v.notBefore, v.notAfter, this.since).getTime() - Date.now());
    this.timer = setTimeout(() => void this.renew(), ms);
    this.timer.unref();
  }

  /** Renews now: a fresh key and CSR, signed over the current mTLS connection. */
  async renew(): Promise<void> {
    try {
      const keys = await generateKeyPair();
      const csrPem = await createHostCsr(this.o.name, keys);
      const res = await unary(this.client.renewCertificate.bind(this.client), { csrPem });
      await this.store(res.certificatePem, await privateKeyToPem(keys.privateKey), res.caPem);
      const next = this.makeClient();
      const old = this.client;
      this.client = next;
      this.o.logger.info({ notAfter: res.notAfter, serial: certValidity(res.certificatePem).serial }, "host certificate renewed");
      if (this.o.onRenewed) this.o.onRenewed(next);
      else old.close();
      this.schedule();
    } catch (e) {
      const v = certValidity(this.certPem);
      const delay = retryDelayMs(new Date(), v.notAfter);
      this.o.logger.warn({ err: e instanceof Error ? e.message : String(e), retryInMs: delay }, "renewing the host certificate failed");
      this.schedule(delay);
    }
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
  }
}
