// Pure naming and addressing for the lab. Linux caps interface names at 15 characters,
// which is why prefixes are short and names are built here, in one place.
import { createHash } from "node:crypto";
import ipaddr from "ipaddr.js";
import { invalid } from "../../common/errors.js";

const PREFIX = /^[a-z][a-z0-9]{0,7}$/;
export const MAX_HOSTS = 200;

export function checkPrefix(prefix: string): string {
  if (!PREFIX.test(prefix)) throw invalid("prefix", `"${prefix}" must be 1-8 of a-z, 0-9, starting with a letter`);
  return prefix;
}

export const bridgeName = (prefix: string): string => `${prefix}-br`;
export const hostNetns = (prefix: string, i: number): string => `${prefix}-h${i}`;
/** The root-namespace end of host i's underlay veth ("<= 8 + 6 chars"). */
export const hostUplink = (prefix: string, i: number): string => `${prefix}-h${i}u`;
export const outsideNetns = (prefix: string): string => `${prefix}-out`;
export const outsideUplink = (prefix: string): string => `${prefix}-outu`;

/** Does a netns or link name belong to the lab with this prefix? */
export const ownedBy = (prefix: string, name: string): boolean => name.startsWith(`${prefix}-`);

/**
 * Default underlay: 10.99.X.0/24 with X derived from the prefix, so labs running side by
 * side have distinct addresses too (they are on separate bridges anyway; distinct
 * subnets keep captures and logs unambiguous). The addresses exist only inside the lab.
 */
export function defaultSubnet(prefix: string): string {
  const x = createHash("sha256").update(prefix).digest()[0] ?? 0;
  return `10.99.${x}.0/24`;
}

export interface Addressing {
  subnet: string;
  prefixLen: number;
  host: (i: number) => string;
  outside: string;
}

/** Host i gets .i, the outside namespace .254. Only /24 subnets: simple and enough for a lab. */
export function addressing(subnet: string): Addressing {
  let net: [ipaddr.IPv4 | ipaddr.IPv6, number];
  try {
    net = ipaddr.parseCIDR(subnet);
  } catch {
    throw invalid("subnet", `"${subnet}" is not a CIDR`);
  }
  const [addr, len] = net;
  if (addr.kind() !== "ipv4" || len !== 24) throw invalid("subnet", `"${subnet}" must be an IPv4 /24`);
  const o = (addr as ipaddr.IPv4).octets;
  const base = `${o[0]}.${o[1]}.${o[2]}`;
  return {
    subnet: `${base}.0/24`,
    prefixLen: 24,
    host: (i) => `${base}.${i}`,
    outside: `${base}.254`,
  };
}
