// What every command needs, built once per run from the global flags: the
// config, the resolved connection, a lazily connected SDK client and the
// renderer bound to -o. Commands receive an App; they never read process.*.
import { isAbsolute, resolve } from "node:path";
import { connect, readCaFile, type ConnectOptions, type NoidClient } from "../sdk/index.js";
import { configPath, loadConfig, saveConfig, type CliConfig } from "./config.js";
import { parseTimeoutSeconds } from "./parse.js";
import { parseFormat, renderList, renderOne, renderStreamItem, type OutputFormat, type View } from "./render.js";
import { resolveConnection, type Connection, type GlobalFlags } from "./settings.js";

export interface Io {
  stdout: (s: string) => void;
  stderr: (s: string) => void;
  readStdin: () => Promise<string>;
  /** stdout is a terminal: colours and progress lines are fine. */
  isTTY: boolean;
  /** Reads one line typed on the terminal (stdin is a TTY), without echo unless asked; absent when stdin is not a terminal. */
  prompt?: (question: string, opts: { echo: boolean }) => Promise<string>;
  /** Asks a yes/no question on the terminal; absent when there is none to ask on. */
  confirm?: (question: string) => Promise<boolean>;
  cwd: string;
  /** stdin as a stream (exec -i); absent: reads nothing. */
  stdinStream?: AsyncIterable<Buffer | string>;
  /** While registered, Ctrl-C calls `f` instead of ending noidctl; returns the unregister function. */
  onInterrupt?: (f: () => void) => () => void;
  /** Puts the terminal on stdin in raw mode (console) and back; absent when stdin is no terminal. */
  rawMode?: (on: boolean) => void;
}

export interface AppDeps {
  env: Readonly<Record<string, string | undefined>>;
  io: Io;
  now?: () => Date;
  connect?: (opts: ConnectOptions) => NoidClient;
  /** Aborted on Ctrl-C; ends watches and waits cleanly. */
  signal?: AbortSignal;
}

export class App {
  readonly env: Readonly<Record<string, string | undefined>>;
  /** What noidctl exits with when the command itself succeeded (exec passes its command's code on). */
  exitCode = 0;
  readonly io: Io;
  readonly signal: AbortSignal | undefined;
  readonly #now: () => Date;
  readonly #connect: (opts: ConnectOptions) => NoidClient;
  readonly #flags: () => GlobalFlags;
  #config: CliConfig | undefined;
  #client: NoidClient | undefined;

  constructor(deps: AppDeps, flags: () => GlobalFlags) {
    this.env = deps.env;
    this.io = deps.io;
    this.signal = deps.signal;
    this.#now = deps.now ?? (() => new Date());
    this.#connect = deps.connect ?? connect;
    this.#flags = flags;
  }

  get flags(): GlobalFlags {
    return this.#flags();
  }

  get configPath(): string {
    return configPath(this.env);
  }

  config(): CliConfig {
    this.#config ??= loadConfig(this.configPath);
    return this.#config;
  }

  saveConfig(cfg: CliConfig): void {
    saveConfig(this.configPath, cfg);
    this.#config = cfg;
  }

  connection(): Connection {
    return resolveConnection(this.env, this.flags, this.config());
  }

  /** The server this run talks to, for error hints; undefined if even that cannot be worked out. */
  serverForHints(): string | undefined {
    try {
      return this.connection().server;
    } catch {
      return undefined;
    }
  }

  /** Paths in flags are relative to where the user is, not where the config lives. */
  absolute(path: string): string {
    return isAbsolute(path) ? path : resolve(this.io.cwd, path);
  }

  connectOptions(conn: Connection): ConnectOptions {
    const timeout = this.flags.timeout;
    return {
      address: conn.server,
      ...(conn.token ? { token: conn.token } : {}),
      insecure: conn.insecure,
      ...(conn.caFile ? { tls: { caPem: readCaFile(this.absolute(conn.caFile)) } } : conn.caPem ? { tls: { caPem: conn.caPem } } : {}),
      ...(timeout !== undefined ? { deadlineMs: parseTimeoutSeconds(timeout) } : {}),
    };
  }

  #warnedPlaintext = false;

  /** A client for an explicit connection (auth setup checks a token before saving it). */
  connectTo(conn: Connection): NoidClient {
    if (conn.insecure && !isLocalAddress(conn.server) && !this.#warnedPlaintext) {
      this.#warnedPlaintext = true;
      this.note(`warning: plaintext connection to ${conn.server} (--insecure): the token crosses the network unencrypted`);
    }
    return this.#connect(this.connectOptions(conn));
  }

  client(): NoidClient {
    this.#client ??= this.connectTo(this.connection());
    return this.#client;
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
  }

  get format(): OutputFormat {
    return parseFormat(this.flags.output ?? "table");
  }

  /** True for json/yaml: commands then print data instead of sentences. */
  get structured(): boolean {
    return this.format === "json" || this.format === "yaml";
  }

  now(): Date {
    return this.#now();
  }

  printList<T>(view: View<T>, items: readonly T[]): void {
    this.io.stdout(renderList(view, items, this.format, { color: this.io.isTTY, now: this.now() }));
  }

  printOne<T>(view: View<T>, item: T): void {
    this.io.stdout(renderOne(view, item, this.format, { color: this.io.isTTY, now: this.now() }));
  }

  printStreamItem<T>(view: View<T>, item: T, header: boolean): void {
    this.io.stdout(renderStreamItem(view, item, this.format, { color: this.io.isTTY, now: this.now(), header }));
  }

  /** A sentence for humans (table formats) or the data itself (json/yaml). */
  printResult<T>(sentence: string, view: View<T>, item: T): void {
    if (this.structured) this.printOne(view, item);
    else this.io.stdout(sentence + "\n");
  }

  /** Progress and warnings go to stderr so stdout stays parseable. */
  note(message: string): void {
    this.io.stderr(message + "\n");
  }
}

/** Unix sockets and loopback addresses: plaintext there never crosses a network. */
export function isLocalAddress(server: string): boolean {
  if (server.startsWith("unix:")) return true;
  const host = server.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\./.test(host);
}
