// The ingress's nginx configuration, pure: one server block per HTTP route (server_name =
// the route's hostname, proxy_pass to the VM host's mesh address and mesh port), a default
// server answering 404 for any other Host, JSON access logs the agent tails into its own log.
// Everything nginx needs lives under the agent's prefix directory; nothing of Debian's
// /etc/nginx is read.
import { invalid } from "../../common/errors.js";
import { checkHostname } from "../../common/ports.js";

export interface IngressRoute {
  hostname: string;
  /** "mesh ip:port" of the VM's host. */
  upstream: string;
}

export interface NginxSettings {
  /** Absolute directory: configuration, pid, logs and temp files. */
  prefix: string;
  /** "address:port" the ingress listens on (the host's underlay address). */
  listen: string;
  /** Worker processes run as this user and group. */
  user: string;
  group: string;
}

const UPSTREAM = /^(\d{1,3}\.){3}\d{1,3}:\d{1,5}$/;
const LISTEN = /^((\d{1,3}\.){3}\d{1,3}|\*):\d{1,5}$/;
const SAFE_PATH = /^\/[A-Za-z0-9._/-]+$/;
const NAME = /^[a-z_][a-z0-9_-]{0,31}$/;

/** Fields of each access log line (JSON, escaped by nginx). */
export const ACCESS_LOG_FORMAT =
  '{"time":"$time_iso8601","remote":"$remote_addr","host":"$host","method":"$request_method","uri":"$request_uri",' +
  '"status":"$status","bytes":"$body_bytes_sent","upstream":"$upstream_addr","upstream_status":"$upstream_status","request_time":"$request_time"}';

export const accessLogPath = (prefix: string): string => `${prefix}/logs/access.log`;
export const errorLogPath = (prefix: string): string => `${prefix}/logs/error.log`;
export const pidPath = (prefix: string): string => `${prefix}/nginx.pid`;

export function renderNginx(s: NginxSettings, routes: readonly IngressRoute[]): string {
  if (!SAFE_PATH.test(s.prefix)) throw invalid("prefix", `"${s.prefix}" is not a plain absolute path`);
  if (!LISTEN.test(s.listen)) throw invalid("listen", `"${s.listen}" is not address:port`);
  if (!NAME.test(s.user) || !NAME.test(s.group)) throw invalid("user", "not a user or group name");
  const seen = new Set<string>();
  const servers = [...routes]
    .sort((a, b) => a.hostname.localeCompare(b.hostname))
    .map((r) => {
      const host = checkHostname("hostname", r.hostname);
      if (host !== r.hostname) throw invalid("hostname", `"${r.hostname}" is not in canonical form`);
      if (!UPSTREAM.test(r.upstream)) throw invalid("upstream", `"${r.upstream}" is not address:port`);
      if (seen.has(host)) throw invalid("hostname", `${host} appears twice`);
      seen.add(host);
      return [
        `    server {`,
        `        listen ${s.listen};`,
        `        server_name ${host};`,
        `        location / {`,
        `            proxy_pass http://${r.upstream};`,
        `            proxy_http_version 1.1;`,
        `            proxy_set_header Connection "";`,
        `            proxy_set_header Host $host;`,
        `            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;`,
        `            proxy_set_header X-Forwarded-Proto $scheme;`,
        `            proxy_connect_timeout 5s;`,
        `        }`,
        `    }`,
      ].join("\n");
    });
  const p = s.prefix;
  return [
    `# Written by the noid agent (ingress); ${routes.length} route(s). Do not edit: it is rewritten.`,
    `daemon off;`,
    `master_process on;`,
    `worker_processes 1;`,
    `user ${s.user} ${s.group};`,
    `pid ${pidPath(p)};`,
    `error_log ${errorLogPath(p)} warn;`,
    `events { worker_connections 1024; }`,
    `http {`,
    `    log_format noid escape=json '${ACCESS_LOG_FORMAT}';`,
    `    access_log ${accessLogPath(p)} noid;`,
    `    client_body_temp_path ${p}/tmp/body;`,
    `    proxy_temp_path ${p}/tmp/proxy;`,
    `    fastcgi_temp_path ${p}/tmp/fastcgi;`,
    `    uwsgi_temp_path ${p}/tmp/uwsgi;`,
    `    scgi_temp_path ${p}/tmp/scgi;`,
    `    server_tokens off;`,
    `    server_names_hash_bucket_size 128;`,
    `    server {`,
    `        listen ${s.listen} default_server;`,
    `        server_name _;`,
    `        return 404;`,
    `    }`,
    ...servers,
    `}`,
    ``,
  ].join("\n");
}

export interface AccessEntry {
  time: string;
  remote: string;
  host: string;
  method: string;
  uri: string;
  status: number;
  bytes: number;
  upstream: string;
  upstream_status: string;
  request_time: number;
}

/** One access log line, or undefined when it is not ours (a partial line, garbage). */
export function parseAccessLine(line: string): AccessEntry | undefined {
  try {
    const o = JSON.parse(line) as Record<string, string>;
    if (typeof o.host !== "string" || typeof o.status !== "string") return undefined;
    return {
      time: o.time ?? "",
      remote: o.remote ?? "",
      host: o.host,
      method: o.method ?? "",
      uri: o.uri ?? "",
      status: Number(o.status),
      bytes: Number(o.bytes ?? 0),
      upstream: o.upstream ?? "",
      upstream_status: o.upstream_status ?? "",
      request_time: Number(o.request_time ?? 0),
    };
  } catch {
    return undefined;
  }
}
