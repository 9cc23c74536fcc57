// Observed network devices, from `ip -j -d addr show` (one call gives kind, VXLAN
// parameters, MTU, master, state and addresses of every device), and the pure diff of one
// device's settings.
import { NoidError } from "../common/errors.js";
import type { MeshAction } from "./actions.js";

export interface ObservedLink {
  name: string;
  /** linkinfo.info_kind: "bridge", "vxlan", "wireguard", "tun", "veth", ... */
  kind?: string;
  mtu: number;
  mac?: string;
  master?: string;
  /** Administratively up (the UP flag). */
  up: boolean;
  /** IPv4 addresses as "a.b.c.d/len". */
  ipv4: string[];
  vxlan?: { id: number; local?: string; port: number; learning: boolean };
}

interface IpJsonLink {
  ifname: string;
  flags?: string[];
  mtu: number;
  address?: string;
  master?: string;
  linkinfo?: { info_kind?: string; info_data?: { id?: number; local?: string; port?: number; learning?: boolean } };
  addr_info?: { family: string; local: string; prefixlen: number }[];
}

export function parseLinks(json: string): ObservedLink[] {
  let raw: IpJsonLink[];
  try {
    raw = JSON.parse(json) as IpJsonLink[];
  } catch (e) {
    throw new NoidError("INTERNAL", "ip -j addr show: unparsable output", { cause: e });
  }
  return raw.map((l): ObservedLink => {
    const kind = l.linkinfo?.info_kind;
    const d = l.linkinfo?.info_data;
    return {
      name: l.ifname,
      ...(kind ? { kind } : {}),
      mtu: l.mtu,
      ...(l.address ? { mac: l.address.toLowerCase() } : {}),
      ...(l.master ? { master: l.master } : {}),
      up: (l.flags ?? []).includes("UP"),
      ipv4: (l.addr_info ?? []).filter((a) => a.family === "inet").map((a) => `${a.local}/${a.prefixlen}`),
      ...(kind === "vxlan" && d
        ? { vxlan: { id: d.id ?? -1, ...(d.local ? { local: d.local } : {}), port: d.port ?? -1, learning: d.learning ?? true } }
        : {}),
    };
  });
}

export interface LinkSettings {
  name: string;
  mtu: number;
  mac?: string;
  master?: string;
  /** Exactly these IPv4 addresses (others are removed); undefined = leave addresses alone. */
  ipv4?: string[];
}

/** The link-set / addr-* actions that make an existing device match `want`. */
export function planLinkSettings(want: LinkSettings, have: ObservedLink | undefined): MeshAction[] {
  const out: MeshAction[] = [];
  const set: Extract<MeshAction, { kind: "link-set" }> = { kind: "link-set", name: want.name };
  if (!have || have.mtu !== want.mtu) set.mtu = want.mtu;
  if (want.mac !== undefined && (!have || have.mac !== want.mac)) set.mac = want.mac;
  if (want.master !== undefined && (!have || have.master !== want.master)) set.master = want.master;
  if (!have || !have.up) set.up = true;
  if (Object.keys(set).length > 2) out.push(set);
  if (want.ipv4) {
    const present = new Set(have?.ipv4 ?? []);
    for (const a of have?.ipv4 ?? []) if (!want.ipv4.includes(a)) out.push({ kind: "addr-del", dev: want.name, address: a });
    for (const a of want.ipv4) if (!present.has(a)) out.push({ kind: "addr-add", dev: want.name, address: a });
  }
  return out;
}
