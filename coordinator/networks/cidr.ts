// IPv4 address math for tenant networks. Pure. Addresses are handled as
// unsigned 32-bit integers; ipaddr.js only decides what a valid dotted quad is
// (it rejects octal-looking "010.0.0.1", which the kernel would read as 8).
import ipaddr from "ipaddr.js";

export interface Cidr {
  /** Network address as an unsigned 32-bit integer. */
  base: number;
  prefix: number;
}

export function isIpv4(s: string): boolean {
  return ipaddr.IPv4.isValidFourPartDecimal(s);
}

export function ipToInt(s: string): number {
  const p = s.split(".").map(Number);
  return (((p[0] ?? 0) << 24) | ((p[1] ?? 0) << 16) | ((p[2] ?? 0) << 8) | (p[3] ?? 0)) >>> 0;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join(".");
}

export function size(c: Cidr): number {
  return 2 ** (32 - c.prefix);
}

export function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

export function formatCidr(c: Cidr): string {
  return `${intToIp(c.base)}/${c.prefix}`;
}

export type ParsedCidr = { ok: true; cidr: Cidr } | { ok: false; why: string };

/** "a.b.c.d/n" with the host bits zero; says what is wrong otherwise. */
export function parseCidr(s: string): ParsedCidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(s);
  if (!m || !isIpv4(m[1]!)) return { ok: false, why: `"${s}" is not an IPv4 CIDR like 10.20.0.0/24` };
  const prefix = Number(m[2]);
  if (prefix > 32) return { ok: false, why: `"${s}": prefix length must be 0..32` };
  const ip = ipToInt(m[1]!);
  const base = (ip & maskOf(prefix)) >>> 0;
  if (base !== ip) return { ok: false, why: `"${s}" has host bits set; did you mean ${intToIp(base)}/${prefix}?` };
  return { ok: true, cidr: { base, prefix } };
}

export function contains(c: Cidr, ip: number): boolean {
  return ((ip & maskOf(c.prefix)) >>> 0) === c.base;
}

/** Within `outer` entirely. */
export function within(inner: Cidr, outer: Cidr): boolean {
  return inner.prefix >= outer.prefix && contains(outer, inner.base);
}

export function overlaps(a: Cidr, b: Cidr): boolean {
  return within(a, b) || within(b, a);
}

/** The gateway is the first usable address (.1 of a /24). */
export function gatewayOf(c: Cidr): number {
  return c.base + 1;
}

/** Addresses VMs may get: all but network, gateway and broadcast. */
export function vmCapacity(c: Cidr): number {
  return Math.max(0, size(c) - 3);
}

/** First and last address a VM may get (inclusive). */
export function vmRange(c: Cidr): { first: number; last: number } {
  return { first: c.base + 2, last: c.base + size(c) - 2 };
}
