// Mesh changes as data: plan.ts decides them (pure), apply.ts runs them. Each action maps
// to one or a few argv arrays, built here without I/O so tests can compare them as text.
import { FLOOD_MAC, type WgPeerSpec } from "./topology.js";

export type MeshAction =
  | { kind: "wg-key"; ifname: string }
  | { kind: "wg-port"; ifname: string; port: number }
  | { kind: "wg-peer-set"; ifname: string; peer: WgPeerSpec }
  | { kind: "wg-peer-remove"; ifname: string; publicKey: string }
  | { kind: "link-add-bridge"; name: string; mac: string; mtu: number }
  | { kind: "link-add-vxlan"; name: string; vni: number; local: string; port: number; mtu: number }
  | { kind: "link-del"; name: string }
  | { kind: "link-set"; name: string; mtu?: number; mac?: string; master?: string; up?: boolean }
  | { kind: "addr-add"; dev: string; address: string }
  | { kind: "addr-del"; dev: string; address: string }
  | { kind: "fdb-add"; dev: string; mac: string; dst: string }
  | { kind: "fdb-del"; dev: string; mac: string; dst: string };

export const KEY_FILE = "<private-key-file>";

export interface Command {
  argv: string[];
  /** WireGuard commands talk to wireguard-go's socket, which lives in the host's mount namespace. */
  wg?: boolean;
  /**
   * argv holds KEY_FILE where a file with the private key goes (never the key itself in argv;
   * not stdin either: `wg` opens the path, and /dev/stdin on a socket pipe cannot be opened).
   */
  keyFile?: boolean;
}

export function actionCommands(a: MeshAction): Command[] {
  switch (a.kind) {
    case "wg-key":
      return [{ argv: ["wg", "set", a.ifname, "private-key", KEY_FILE], wg: true, keyFile: true }];
    case "wg-port":
      return [{ argv: ["wg", "set", a.ifname, "listen-port", String(a.port)], wg: true }];
    case "wg-peer-set":
      // allowed-ips replaces the peer's whole list, so a changed list needs no removal first.
      return [{
        argv: ["wg", "set", a.ifname, "peer", a.peer.publicKey, "endpoint", a.peer.endpoint, "allowed-ips", a.peer.allowedIps.join(",")],
        wg: true,
      }];
    case "wg-peer-remove":
      return [{ argv: ["wg", "set", a.ifname, "peer", a.publicKey, "remove"], wg: true }];
    case "link-add-bridge":
      // No IPv6 link-local: the gateway MAC is the same on every host, so would its fe80 address be.
      return [
        { argv: ["ip", "link", "add", a.name, "address", a.mac, "mtu", String(a.mtu), "type", "bridge"] },
        { argv: ["ip", "link", "set", a.name, "addrgenmode", "none"] },
      ];
    case "link-add-vxlan":
      // nolearning: every remote MAC comes from the coordinator, never from traffic (no spoofed moves).
      return [
        {
          argv: ["ip", "link", "add", a.name, "mtu", String(a.mtu), "type", "vxlan", "id", String(a.vni),
            "local", a.local, "dstport", String(a.port), "nolearning"],
        },
        { argv: ["ip", "link", "set", a.name, "addrgenmode", "none"] },
      ];
    case "link-del":
      return [{ argv: ["ip", "link", "del", a.name] }];
    case "link-set": {
      const argv = ["ip", "link", "set", a.name];
      if (a.mtu !== undefined) argv.push("mtu", String(a.mtu));
      if (a.mac !== undefined) argv.push("address", a.mac);
      if (a.master !== undefined) argv.push("master", a.master);
      if (a.up) argv.push("up");
      return [{ argv }];
    }
    case "addr-add":
      return [{ argv: ["ip", "addr", "add", a.address, "dev", a.dev] }];
    case "addr-del":
      return [{ argv: ["ip", "addr", "del", a.address, "dev", a.dev] }];
    case "fdb-add":
      // Flood entries are a list per device (append); a MAC has one place (replace moves it).
      return [{
        argv: a.mac === FLOOD_MAC
          ? ["bridge", "fdb", "append", a.mac, "dev", a.dev, "dst", a.dst]
          : ["bridge", "fdb", "replace", a.mac, "dev", a.dev, "dst", a.dst, "static"],
      }];
    case "fdb-del":
      return [{ argv: ["bridge", "fdb", "del", a.mac, "dev", a.dev, "dst", a.dst] }];
  }
}

/** One line per action, for logs and for tests that compare plans as text. */
export function describeAction(a: MeshAction): string {
  switch (a.kind) {
    case "wg-peer-set":
      return `wg-peer-set ${a.ifname} ${a.peer.hostId} ${a.peer.endpoint} ${a.peer.allowedIps.join(",")}`;
    case "wg-peer-remove":
      return `wg-peer-remove ${a.ifname} ${a.publicKey}`;
    default: {
      const { kind, ...rest } = a;
      return `${kind} ${Object.values(rest).map(String).join(" ")}`;
    }
  }
}
