// Serves one prom-client Registry at GET /metrics over plain HTTP. Bind it to
// loopback or a management network: the exposition has host names, user names
// and VM ids, never secrets.
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { Registry } from "prom-client";
import { NoidError } from "./errors.js";

export interface MetricsServer {
  /** Port actually bound (useful with ":0"). */
  port: number;
  /** host:port to scrape. */
  address: string;
  close(): Promise<void>;
}

/** Splits "host:port" / "[v6]:port"; throws INVALID_ARGUMENT naming `field`. */
export function parseListen(field: string, listen: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[2]);
  if (!m || port > 65535) throw new NoidError("INVALID_ARGUMENT", `${field}: "${listen}" must be host:port`, { field });
  return { host: m[1]!.replace(/^\[|\]$/g, ""), port };
}

export async function serveMetrics(registry: Registry, listen: string, onError?: (err: unknown) => void): Promise<MetricsServer> {
  const { host, port } = parseListen("metrics_listen", listen);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" || path !== "/metrics") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found; try GET /metrics\n");
      return;
    }
    registry.metrics().then(
      (body) => res.writeHead(200, { "content-type": registry.contentType }).end(body),
      (err: unknown) => {
        onError?.(err);
        res.writeHead(500, { "content-type": "text/plain" }).end("collecting metrics failed\n");
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err) => reject(new NoidError("UNAVAILABLE", `metrics: listening on ${listen}: ${err.message}`, { cause: err })));
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as AddressInfo).port;
  const dial = host === "0.0.0.0" || host === "::" ? "127.0.0.1" : host.includes(":") ? `[${host}]` : host;
  return {
    port: bound,
    address: `${dial}:${bound}`,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}
