// Several coordinator replicas behind one gRPC channel. "a:7654,b:7654"
// becomes the target "noid-list:a:7654,b:7654": our resolver looks every
// name up (DNS or IP literal) and hands grpc-js all the addresses, and the
// channel uses pick_first with a shuffled list: each client talks to one
// live replica; when its connection breaks, the next call connects to
// another one. The agent reopens its session the same way (its session
// breaks, it reconnects, the channel picks a live replica).
//
// Why pick_first and not round_robin: an agent session and an exec stream
// live on one replica anyway, and one connection per client keeps the
// coordinator's connection count equal to the number of clients. Shuffling
// spreads clients over the replicas.
import { lookup } from "node:dns/promises";
import { isIP } from "node:net";
import { Metadata, status, type ChannelOptions, experimental } from "@grpc/grpc-js";
import { NoidApiError } from "./errors.js";

export const LIST_SCHEME = "noid-list";

export interface HostPort {
  host: string;
  port: number;
}

/** Pure: "a:1, b:2" or ["a:1","b:2"] to a list of host:port strings (no empties). */
export function splitAddresses(addresses: string | readonly string[]): string[] {
  const parts = (typeof addresses === "string" ? [addresses] : addresses).flatMap((a) => a.split(","));
  return parts.map((a) => a.trim()).filter((a) => a.length > 0);
}

/** Pure: "host:port" or "[v6]:port" to its parts; undefined if malformed. */
export function parseHostPort(a: string): HostPort | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(a.trim());
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

/** gRPC service config for several replicas: one connection at a time, replicas in random order per client. */
export function multiServiceConfig(shuffle = true): string {
  return JSON.stringify({ loadBalancingConfig: [{ pick_first: { shuffleAddressList: shuffle } }] });
}

/**
 * The grpc-js target (and channel options) for one address or a list.
 * A single address is returned as is; a list must be host:port entries.
 * `shuffle: false` tries the replicas in the given order (tests).
 */
export function coordinatorTarget(addresses: string | readonly string[], opts: { shuffle?: boolean } = {}): { target: string; options: ChannelOptions; addresses: string[] } {
  const list = splitAddresses(addresses);
  if (list.length === 0) throw new NoidApiError("INVALID_ARGUMENT", "no coordinator address given");
  if (list.length === 1) return { target: list[0]!, options: {}, addresses: list };
  for (const a of list) {
    if (!parseHostPort(a)) throw new NoidApiError("INVALID_ARGUMENT", `address "${a}" in a list must be host:port (unix sockets cannot be listed)`);
  }
  registerListResolver();
  return { target: `${LIST_SCHEME}:${list.join(",")}`, options: { "grpc.service_config": multiServiceConfig(opts.shuffle ?? true) }, addresses: list };
}

type Listener = experimental.ResolverListener;

/** Names are looked up again at most this often (pick_first asks on every failure; answering at once would spin). */
const MIN_RESOLVE_INTERVAL_MS = 5000;

class ListResolver implements experimental.Resolver {
  private readonly entries: HostPort[];
  private generation = 0;
  private lastAt = 0;
  private pending?: NodeJS.Timeout;

  constructor(
    target: experimental.GrpcUri,
    private readonly listener: Listener,
  ) {
    this.entries = target.path.split(",").flatMap((a) => {
      const hp = parseHostPort(a);
      return hp ? [hp] : [];
    });
  }

  updateResolution(): void {
    if (this.pending) return;
    const wait = this.lastAt === 0 ? 0 : this.lastAt + MIN_RESOLVE_INTERVAL_MS - Date.now();
    if (wait > 0) {
      // Only names can change; a list of IP literals is answered once.
      if (this.entries.every((e) => isIP(e.host))) return;
      this.pending = setTimeout(() => {
        this.pending = undefined;
        this.resolve();
      }, wait);
      this.pending.unref();
      return;
    }
    this.pending = setTimeout(() => {
      this.pending = undefined;
      this.resolve();
    }, 0);
  }

  private resolve(): void {
    this.lastAt = Date.now();
    const gen = ++this.generation;
    void Promise.all(
      this.entries.map(async (e) => {
        if (isIP(e.host)) return [{ host: e.host, port: e.port }];
        try {
          const found = await lookup(e.host, { all: true });
          return found.map((f) => ({ host: f.address, port: e.port }));
        } catch {
          return []; // one unresolvable replica must not hide the others
        }
      }),
    ).then((lists) => {
      if (gen !== this.generation) return;
      const endpoints = lists.flat().map((addr) => ({ addresses: [addr] }));
      if (endpoints.length === 0) {
        this.listener(
          experimental.statusOrFromError({ code: status.UNAVAILABLE, details: `no coordinator address resolves`, metadata: new Metadata() }),
          {},
          null,
          "",
        );
        return;
      }
      this.listener(experimental.statusOrFromValue(endpoints), {}, null, "");
    });
  }

  destroy(): void {
    this.generation++;
    if (this.pending) clearTimeout(this.pending);
    this.pending = undefined;
    this.lastAt = 0; // a later updateResolution starts afresh, like grpc-js's own resolvers
  }

  static getDefaultAuthority(target: experimental.GrpcUri): string {
    return target.path.split(",")[0] ?? "";
  }
}

let registered = false;
function registerListResolver(): void {
  if (registered) return;
  registered = true;
  experimental.registerResolver(LIST_SCHEME, ListResolver);
}
