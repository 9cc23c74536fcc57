// Port exposure specs, pure: "8080:80/tcp" (expose), "8080/tcp" (unexpose) and HTTP
// hostnames, parsed and validated the same way by the CLI, the SDK and the coordinator.
import { invalid } from "./errors.js";

export const PROTOCOLS = ["tcp", "udp"] as const;
export type Protocol = (typeof PROTOCOLS)[number];

export interface PortSpec {
  hostPort: number;
  vmPort: number;
  protocol: Protocol;
}

/** Host ports below this need an admin (they are the host's well-known services). */
export const PRIVILEGED_BELOW = 1024;

export function checkProtocol(field: string, p: string): Protocol {
  const v = (p || "tcp").toLowerCase();
  if (!(PROTOCOLS as readonly string[]).includes(v)) throw invalid(field, `"${p}" is not a protocol (tcp or udp)`);
  return v as Protocol;
}

export function checkPort(field: string, n: number): number {
  if (!Number.isInteger(n) || n < 1 || n > 65535) throw invalid(field, `${n} is not a port (1-65535)`);
  return n;
}

function portText(field: string, s: string): number {
  if (/^\d+-\d+$/.test(s)) throw invalid(field, `"${s}" is a port range; expose one port at a time`);
  if (!/^\d{1,5}$/.test(s)) throw invalid(field, `"${s}" is not a port number`);
  return checkPort(field, Number(s));
}

/** "8080:80/tcp", "8080:80" (tcp), "80/udp" or "80" (the same port on both sides). */
export function parsePortSpec(text: string, field = "spec"): PortSpec {
  const s = text.trim();
  if (!s) throw invalid(field, "is required (HOST:VM/PROTO, e.g. 8080:80/tcp)");
  const [ports = "", proto, ...rest] = s.split("/");
  if (rest.length > 0) throw invalid(field, `"${s}" must be HOST:VM/PROTO`);
  const protocol = checkProtocol(field, proto ?? "tcp");
  const sides = ports.split(":");
  if (sides.length > 2) throw invalid(field, `"${s}" must be HOST:VM/PROTO (no address)`);
  const hostPort = portText(field, sides[0] ?? "");
  const vmPort = sides.length === 2 ? portText(field, sides[1] ?? "") : hostPort;
  return { hostPort, vmPort, protocol };
}

/** "8080/tcp" or "8080": the host side of an exposure, for unexpose. */
export function parseHostPortSpec(text: string, field = "spec"): { hostPort: number; protocol: Protocol } {
  const s = text.trim();
  if (s.includes(":")) throw invalid(field, `"${s}": give the host port only (HOST/PROTO)`);
  const { hostPort, protocol } = parsePortSpec(s, field);
  return { hostPort, protocol };
}

export const formatPort = (p: { hostPort: number; vmPort: number; protocol: string }): string => `${p.hostPort}:${p.vmPort}/${p.protocol}`;

const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * An HTTP hostname: a lower-case DNS name of at least two labels, at most 253 characters,
 * no wildcard, no port, no trailing dot (it goes into the proxy configuration verbatim).
 */
export function checkHostname(field: string, name: string): string {
  const h = name.trim().toLowerCase();
  if (!h) throw invalid(field, "is required");
  if (h.length > 253) throw invalid(field, `must be at most 253 characters (got ${h.length})`);
  const labels = h.split(".");
  if (labels.length < 2 || !labels.every((l) => LABEL.test(l))) {
    throw invalid(field, `"${name.slice(0, 80)}" is not a DNS name (labels of a-z, 0-9 and '-', separated by dots)`);
  }
  if (/^\d+$/.test(labels[labels.length - 1]!)) throw invalid(field, `"${name}" looks like an address, not a name`);
  return h;
}
