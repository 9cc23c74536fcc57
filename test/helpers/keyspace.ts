// What the coordinator's etcd keyspace may hold: every collection, the shape
// of its keys, how its records decode, and which RPCs may add to it. Used
// after fuzzing to prove bad input left nothing behind. A new collection must
// be added here (the check names it), which is the point: nobody writes a
// key that this table does not explain.
import { isDnsLabel } from "../../common/names.js";
import { Vm } from "../../gen/noid/v1/vm.js";
import { Network } from "../../gen/noid/v1/network.js";
import { SshKeyRecord, TokenRecord, UserRecord, QuotaRecord } from "../../gen/noid/v1/records.js";
import { normalizeVmSpec } from "../../coordinator/validate.js";
import { parseSshKey } from "../../coordinator/users/ssh-key.js";
import type { KeyValue } from "../../coordinator/store/store.js";

export interface KeyspaceFinding {
  key: string;
  problem: string;
}

type Seg = "name" | "id" | "hex" | "any";

interface Collection {
  /** Patterns of the segments after the collection name. */
  segs: Seg[] | "any";
  /** RPC method names whose acceptance may create keys here (any accepted request if omitted). */
  creators?: string[];
  /** Throws or returns a problem when the value is not a whole, valid record for `parts`. */
  check?: (value: Uint8Array, parts: string[], all: Map<string, Uint8Array>) => string | undefined;
}

const VM_CREATORS = ["CreateVm", "RestoreCheckpoint", "CreateVm(kept)"];

export const COLLECTIONS: Record<string, Collection> = {
  vms: {
    segs: ["id"],
    creators: VM_CREATORS,
    check: (v, [id], all) => {
      const vm = Vm.decode(v);
      if (vm.id !== id) return `record id ${vm.id}`;
      if (!isDnsLabel(vm.name) || !isDnsLabel(vm.owner)) return `bad name/owner ${JSON.stringify([vm.name, vm.owner])}`;
      normalizeVmSpec(vm.spec);
      if (Buffer.from(all.get(`names/${vm.owner}/${vm.name}`) ?? []).toString() !== id) return "no name index";
      if (!all.has(`quota/${vm.owner}`)) return "no quota record for the owner";
      return undefined;
    },
  },
  names: { segs: ["name", "name"], creators: VM_CREATORS, check: (v, _p, all) => (all.has(`vms/${Buffer.from(v).toString()}`) ? undefined : "points at no VM") },
  quota: { segs: ["name"], creators: VM_CREATORS, check: (v) => void QuotaRecord.decode(v) },
  "quota-total": { segs: [], creators: VM_CREATORS, check: (v) => void QuotaRecord.decode(v) },
  networks: {
    segs: ["id"],
    creators: ["CreateNetwork", ...VM_CREATORS],
    check: (v, [id], all) => {
      const n = Network.decode(v);
      if (n.id !== id || !isDnsLabel(n.name) || !isDnsLabel(n.owner)) return `bad network record ${JSON.stringify([n.id, n.name, n.owner])}`;
      if (Buffer.from(all.get(`netnames/${n.owner}/${n.name}`) ?? []).toString() !== id) return "no name index";
      return undefined;
    },
  },
  netnames: { segs: ["name", "name"], creators: ["CreateNetwork", ...VM_CREATORS], check: (v, _p, all) => (all.has(`networks/${Buffer.from(v).toString()}`) ? undefined : "points at no network") },
  netowners: { segs: ["name"], creators: ["CreateNetwork", ...VM_CREATORS] },
  vni: { segs: ["any"], creators: ["CreateNetwork", ...VM_CREATORS] },
  ipamstate: { segs: ["id"], creators: ["CreateNetwork", ...VM_CREATORS] },
  ipam: { segs: ["id", "any"], creators: VM_CREATORS },
  released: { segs: ["id", "any"], creators: ["DestroyVm"] },
  macs: { segs: ["any"], creators: VM_CREATORS },
  users: {
    segs: ["name"],
    creators: ["CreateUser"],
    check: (v, [name]) => {
      const u = UserRecord.decode(v);
      if (u.name !== name) return `record name ${u.name}`;
      if (!u.passwordHash.startsWith("$argon2")) return "no password hash";
      return undefined;
    },
  },
  sshkeys: {
    segs: ["name", "hex"],
    creators: ["AddSshKey"],
    check: (v, [, id]) => {
      const k = SshKeyRecord.decode(v);
      return parseSshKey("public_key", k.publicKey).id === id ? undefined : "key id does not match the key";
    },
  },
  tokens: {
    segs: ["hex"],
    creators: ["CreateToken", "RotateToken", "Login", "RotatePassword", "SetPassword"],
    check: (v) => {
      const t = TokenRecord.decode(v);
      return t.name && t.user ? undefined : "token without name or user";
    },
  },
  "join-tokens": { segs: ["hex"], creators: ["CreateJoinToken"] },
  "host-certs": { segs: ["any"], creators: ["JoinHost", "RenewCertificate"] },
  "revoked-certs": { segs: ["any"], creators: ["RemoveHost", "RenewCertificate"] },
  hosts: { segs: ["id"], creators: ["RegisterHost", "JoinHost"] },
  hostnames: { segs: ["name"], creators: ["RegisterHost", "JoinHost"] },
  alive: { segs: ["id"], creators: ["Session"] },
  meships: { segs: ["any"], creators: ["RegisterHost", "JoinHost"] },
  alloc: { segs: ["id"] },
  assign: { segs: ["id", "id"] },
  checkpoints: { segs: ["id", "name"], creators: ["CreateCheckpoint"] },
  // Port exposure and HTTP routes (coordinator/state/keys.ts portKeys).
  ports: { segs: ["id", "name", "any"], creators: ["ExposePort"] },
  meshports: { segs: ["id", "any"], creators: ["ExposePort"] },
  routes: { segs: ["any"], creators: ["ExposePort"] },
  vmports: { segs: ["id"], creators: ["ExposePort"] },
  portcount: { segs: ["name"], creators: ["ExposePort"] },
  portstatus: { segs: ["id"], creators: ["Session"] },
  audit: { segs: "any" },
  auditchain: { segs: "any" },
  events: { segs: "any" },
  leader: { segs: "any" },  // leader/coordinator (ha/leader.ts)
  election: { segs: "any" },
};

function keptName(value: Uint8Array, kept: Set<string>): boolean {
  const vm = Vm.decode(value);
  return kept.has(`${vm.owner}/${vm.name}`);
}

const SEG_OK: Record<Seg, (s: string) => boolean> = {
  name: isDnsLabel,
  id: (s) => /^[0-9a-z][0-9a-z-]{0,63}$/.test(s),
  hex: (s) => /^[0-9a-f]{16,128}$/.test(s),
  any: (s) => /^[\x21-\x7e]{1,256}$/.test(s),
};

/**
 * Problems in `kvs`: unknown collections, malformed key segments, records that
 * do not decode or do not agree with their indexes, and new keys in a
 * collection no accepted RPC could have written. New VM and user records must
 * name something an accepted response returned (`accepted`).
 */
export function checkKeyspace(
  kvs: KeyValue[],
  ctx: {
    before: Map<string, Uint8Array>;
    accepted: Set<string>;
    acceptedPaths: Set<string>;
    /** "<owner>/<name>" of VMs CreateVm kept PENDING while answering RESOURCE_EXHAUSTED (no host fits yet): created by design. */
    keptVms?: Set<string>;
  },
): KeyspaceFinding[] {
  const all = new Map(kvs.map((kv) => [kv.key, kv.value]));
  const okMethods = new Set([...ctx.acceptedPaths].map((p) => p.slice(p.lastIndexOf("/") + 1)));
  const out: KeyspaceFinding[] = [];
  for (const { key, value } of kvs) {
    const [coll, ...parts] = key.split("/");
    const c = COLLECTIONS[coll!];
    if (!c) {
      out.push({ key, problem: `unknown collection "${coll}" (add it to test/helpers/keyspace.ts if it is legitimate)` });
      continue;
    }
    if (c.segs !== "any") {
      if (parts.length !== c.segs.length) {
        out.push({ key, problem: `expected ${c.segs.length} segments after ${coll}/` });
        continue;
      }
      const badSeg = parts.findIndex((p, i) => !SEG_OK[(c.segs as Seg[])[i]!](p));
      if (badSeg >= 0) {
        out.push({ key, problem: `segment ${JSON.stringify(parts[badSeg])} is not a valid ${(c.segs as Seg[])[badSeg]}` });
        continue;
      }
    } else if (!parts.every((p) => SEG_OK.any(p))) {
      out.push({ key, problem: "empty or non-printable segment" });
      continue;
    }
    try {
      const p = c.check?.(value, parts, all);
      if (p) out.push({ key, problem: p });
    } catch (e) {
      out.push({ key, problem: `record does not decode or validate: ${String(e)}` });
    }
    if (!ctx.before.has(key) && c.creators && !c.creators.some((m) => okMethods.has(m))) {
      out.push({ key, problem: `new key, but no ${c.creators.join("/")} request was accepted` });
    }
    const kept = coll === "vms" && ctx.keptVms !== undefined && keptName(value, ctx.keptVms);
    if (!ctx.before.has(key) && (coll === "vms" || coll === "users") && !ctx.accepted.has(parts[0]!) && !kept) {
      out.push({ key, problem: "new record that no accepted response returned" });
    }
  }
  return out;
}
