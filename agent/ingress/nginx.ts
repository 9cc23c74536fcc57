// The ingress's nginx, I/O: started by the agent with its own configuration and prefix
// (never Debian's default config), in the agent's network namespace; its PID recorded in
// <prefix>/nginx.json so the next agent adopts it and whoever tears the host down kills
// exactly it. A new route set is written to nginx.conf.new and checked with `nginx -t`;
// only a configuration that passes replaces nginx.conf and is loaded with SIGHUP (graceful:
// old workers finish their requests). One that fails is not loaded: the running
// configuration keeps serving, new routes that pass the check on their own are added to it,
// and the error names the routes left out. The access log (JSON lines) is
// tailed into the agent's own log (component "ingress"), which is what reaches the central logs.
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, renameSync, statSync, chownSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Logger } from "../../common/logger.js";
import { NoidError } from "../../common/errors.js";
import { type ProcessRef, type Runner, type Spawner, isAlive, processRef, run as defaultRun, spawnDetached } from "../../common/run.js";
import { type IngressRoute, type NginxSettings, accessLogPath, errorLogPath, parseAccessLine, renderNginx } from "./nginx-config.js";

export const NGINX_BINARY = "/usr/sbin/nginx";

export interface NginxIngressOptions {
  prefix: string;
  listen: string;
  logger: Logger;
  binary?: string;
  /** Workers' user and group (default nobody / nogroup). */
  user?: { name: string; group: string; uid: number; gid: number };
  runner?: Runner;
  spawner?: Spawner;
  /** How often the access log is read (default 500 ms). */
  tailMs?: number;
}

export interface IngressState {
  /** Hostnames the running configuration serves. */
  routes: string[];
  /** Why the last configuration was not loaded ("" = it was). */
  error: string;
}

export class NginxIngress {
  private ref: ProcessRef | undefined;
  private applied = "";
  private state: IngressState = { routes: [], error: "" };
  private tail: NodeJS.Timeout | undefined;
  private offset = 0;
  private partial = "";
  private readonly runner: Runner;
  private readonly conf: string;
  private readonly settings: NginxSettings;
  private readonly binary: string;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly o: NginxIngressOptions) {
    this.runner = o.runner ?? defaultRun;
    this.binary = o.binary ?? NGINX_BINARY;
    this.conf = join(o.prefix, "nginx.conf");
    const u = o.user ?? { name: "nobody", group: "nogroup", uid: 65534, gid: 65534 };
    this.settings = { prefix: o.prefix, listen: o.listen, user: u.name, group: u.group };
    for (const d of ["logs", "tmp"]) mkdirSync(join(o.prefix, d), { recursive: true, mode: 0o750 });
    // Workers write request bodies and buffered responses here.
    chownSync(join(o.prefix, "tmp"), u.uid, u.gid);
  }

  get current(): IngressState {
    return { ...this.state, routes: [...this.state.routes] };
  }

  get process(): ProcessRef | undefined {
    return this.ref;
  }

  private get record(): string {
    return join(this.o.prefix, "nginx.json");
  }

  private argv(conf: string, test: boolean): string[] {
    return [this.binary, ...(test ? ["-t", "-q"] : []), "-c", conf, "-p", this.o.prefix, "-e", errorLogPath(this.o.prefix)];
  }

  /** Adopts the nginx a previous agent started, or starts one with no routes. */
  async start(): Promise<void> {
    const rec = existsSync(this.record) ? (JSON.parse(readFileSync(this.record, "utf8")) as ProcessRef) : undefined;
    if (rec && isAlive(rec)) {
      this.ref = rec;
      this.o.logger.info({ pid: rec.pid }, "nginx adopted");
    } else {
      const text = renderNginx(this.settings, []);
      await this.check(text);
      writeFileSync(this.conf, text);
      this.applied = text;
      const pid = await (this.o.spawner ?? spawnDetached)(this.argv(this.conf, false), { logFile: errorLogPath(this.o.prefix) });
      const ref = processRef(pid);
      if (!ref) throw new NoidError("UNAVAILABLE", `nginx exited at once; see ${errorLogPath(this.o.prefix)}`);
      this.ref = ref;
      writeFileSync(this.record, JSON.stringify(ref));
      this.o.logger.info({ pid, listen: this.o.listen }, "nginx started");
    }
    // Only lines written from now on: earlier ones were logged by the agent that saw them.
    this.offset = existsSync(accessLogPath(this.o.prefix)) ? statSync(accessLogPath(this.o.prefix)).size : 0;
    this.tail = setInterval(() => this.readAccessLog(), this.o.tailMs ?? 500);
    this.tail.unref();
  }

  /** Stops tailing; nginx keeps serving (like VMs, it outlives the agent). */
  stop(): void {
    if (this.tail) clearInterval(this.tail);
    this.readAccessLog();
  }

  /** `nginx -t` on a candidate configuration; throws with nginx's own words. */
  private async check(text: string): Promise<void> {
    const candidate = `${this.conf}.new`;
    writeFileSync(candidate, text);
    const r = await this.runner(this.argv(candidate, true), { allowFail: true, timeoutMs: 15_000 });
    if (r.exitCode !== 0) {
      const why = (r.stderr || r.stdout).trim().split("\n").filter((l) => !/test failed$/.test(l)).join("; ");
      throw new NoidError("FAILED_PRECONDITION", `nginx -t refused the new configuration: ${why || `exit ${r.exitCode}`}`);
    }
  }

  /** Serves exactly `routes` if nginx accepts their configuration; else keeps what runs. */
  setRoutes(routes: readonly IngressRoute[]): Promise<IngressState> {
    const next = this.queue.then(() => this.apply(routes));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private async apply(routes: readonly IngressRoute[]): Promise<IngressState> {
    if (!this.ref || !isAlive(this.ref)) {
      this.state = { ...this.state, error: "nginx is not running" };
      return this.current;
    }
    let chosen: readonly IngressRoute[] = routes;
    let error = "";
    try {
      await this.check(renderNginx(this.settings, routes));
    } catch (e) {
      // Not loaded. What runs keeps running; of the routes it does not serve yet, those that
      // pass the check one by one are added, the others are named in the error.
      const whole = e instanceof Error ? e.message : String(e);
      const kept = routes.filter((r) => this.state.routes.includes(r.hostname));
      const refused: string[] = [];
      for (const r of routes.filter((x) => !this.state.routes.includes(x.hostname))) {
        try {
          await this.check(renderNginx(this.settings, [...kept, r]));
          kept.push(r);
        } catch {
          refused.push(r.hostname);
        }
      }
      chosen = kept;
      error = refused.length > 0 ? `${whole} (routes left out: ${refused.join(", ")})` : whole;
      if (error !== this.state.error) this.o.logger.warn({ err: error }, "new ingress configuration refused; the running one keeps serving");
    }
    let text: string;
    try {
      text = renderNginx(this.settings, chosen);
      if (text !== this.applied) await this.check(text);
    } catch (e) {
      this.state = { ...this.state, error: e instanceof Error ? e.message : String(e) };
      return this.current;
    }
    if (text !== this.applied) {
      renameSync(`${this.conf}.new`, this.conf);
      process.kill(this.ref.pid, "SIGHUP");
      this.applied = text;
      this.o.logger.info({ routes: chosen.map((r) => r.hostname).sort() }, "ingress configuration loaded (graceful reload)");
    }
    this.state = { routes: chosen.map((r) => r.hostname).sort(), error };
    return this.current;
  }

  /** New complete lines of the access log, each into the agent's log. */
  private readAccessLog(): void {
    const file = accessLogPath(this.o.prefix);
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return;
    }
    if (size < this.offset) this.offset = 0; // rotated or truncated
    if (size === this.offset) return;
    const fd = openSync(file, "r");
    try {
      const buf = Buffer.alloc(Math.min(size - this.offset, 1 << 20));
      const n = readSync(fd, buf, 0, buf.length, this.offset);
      this.offset += n;
      const lines = (this.partial + buf.subarray(0, n).toString("utf8")).split("\n");
      this.partial = lines.pop() ?? "";
      for (const line of lines) {
        const e = parseAccessLine(line);
        if (e) this.o.logger.info({ access: e }, `${e.method} ${e.host}${e.uri} ${e.status}`);
      }
    } finally {
      closeSync(fd);
    }
  }
}
