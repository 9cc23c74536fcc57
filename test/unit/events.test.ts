// The event log's pure parts: filters, visibility, retention planning, and
// which informer changes and audit entries become which events.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { Role } from "../../gen/noid/v1/auth.js";
import { Event } from "../../gen/noid/v1/event.js";
import { Host } from "../../gen/noid/v1/host.js";
import { Vm, VmPhase } from "../../gen/noid/v1/vm.js";
import { eventId, idTime, matches, planTrim, visibleTo } from "../../coordinator/events/event-log.js";
import { aliveEvents, auditEvent, hostEvents, vmEvents } from "../../coordinator/events/recorder.js";
import type { Entry } from "../../coordinator/state/informer.js";

const ev = (p: Partial<Event>): Event => Event.fromPartial({ id: eventId(new Date(1000)), time: new Date(1000), kind: "vm.phase", ...p });
const who = (user: string, role: Role) => ({ user, role, tokenId: "t", tokenName: "t" });
const entry = <T>(key: string, value: T): Entry<T> => ({ key, value, modRevision: 2, createRevision: 1 });
const vm = (p: Partial<Vm> = {}, status: Partial<NonNullable<Vm["status"]>> = {}): Vm =>
  Vm.fromPartial({ id: "v1", name: "web", owner: "alice", ...p, status: { phase: VmPhase.VM_PHASE_PENDING, ...status } });

describe("event filters", () => {
  it("matches vm and host by id or name, kind exactly or by dotted prefix, and since", () => {
    const e = ev({ vmId: "v1", vmName: "web", hostId: "h1", hostName: "hv-1", kind: "security.arp_spoof", time: new Date(5000) });
    expect(matches(e, { vm: "v1" }) && matches(e, { vm: "web" }) && matches(e, { host: "h1" }) && matches(e, { host: "hv-1" })).toBe(true);
    expect(matches(e, { vm: "db" })).toBe(false);
    expect(matches(e, { host: "hv-2" })).toBe(false);
    expect(matches(e, { kind: "security" })).toBe(true);
    expect(matches(e, { kind: "security.arp_spoof" })).toBe(true);
    expect(matches(e, { kind: "sec" })).toBe(false);
    expect(matches(e, { since: new Date(5000) })).toBe(true);
    expect(matches(e, { since: new Date(5001) })).toBe(false);
  });

  it("shows admins everything and others only events of their own VMs", () => {
    const mine = ev({ owner: "alice" });
    const host = ev({ kind: "host.joined", owner: "" });
    expect(visibleTo(host, who("root", Role.ROLE_ADMIN))).toBe(true);
    expect(visibleTo(mine, who("alice", Role.ROLE_USER))).toBe(true);
    expect(visibleTo(mine, who("alice", Role.ROLE_READ_ONLY))).toBe(true);
    expect(visibleTo(mine, who("bob", Role.ROLE_USER))).toBe(false);
    expect(visibleTo(host, who("alice", Role.ROLE_USER))).toBe(false);
    // An owner-less event is never "owned" by a user with an empty name.
    expect(visibleTo(host, who("", Role.ROLE_USER))).toBe(false);
  });
});

describe("retention planning", () => {
  it("ids sort by time and carry it", () => {
    expect(idTime(eventId(new Date(1234567)))).toBe(1234567);
    expect(eventId(new Date(999)) < eventId(new Date(1000))).toBe(true);
  });

  it("drops the oldest beyond the count and everything past the age, never a newer one before an older one", () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 1_000_000 }), { maxLength: 60 }),
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 0, max: 500_000 }),
        (times, maxCount, maxAgeMs) => {
          const ids = times.map((t, i) => `${String(t).padStart(13, "0")}-${String(i).padStart(8, "0")}`);
          const now = 1_000_000;
          const drop = planTrim(ids, ids.length, now, { maxCount, maxAgeMs });
          const keep = [...ids].sort().filter((id) => !drop.includes(id));
          expect(keep.length).toBeLessThanOrEqual(maxCount);
          if (maxAgeMs > 0) expect(keep.every((id) => idTime(id) >= now - maxAgeMs)).toBe(true);
          // What is dropped is a prefix of the sorted ids: the oldest.
          expect(drop).toEqual([...ids].sort().slice(0, drop.length));
          // Nothing is dropped that neither bound asks for.
          const needed = Math.max(ids.length - maxCount, maxAgeMs > 0 ? ids.filter((id) => idTime(id) < now - maxAgeMs).length : 0);
          expect(drop.length).toBe(needed);
          // Given only the oldest k ids of them all (as a trim reads them), it drops what the whole plan drops among those k.
          const k = Math.floor(ids.length / 2);
          expect(planTrim([...ids].sort().slice(0, k), ids.length, now, { maxCount, maxAgeMs })).toEqual(drop.slice(0, k));
        },
      ),
    );
  });
});

describe("which changes become events", () => {
  it("VM created, placed, unschedulable, phase changes (failures as warnings) and deleted", () => {
    expect(vmEvents({ type: "put", entry: entry("vms/v1", vm()) }).map((e) => e.kind)).toEqual(["vm.created"]);
    // The leader places a VM in its create transaction when it can: both events, in that order.
    const createdPlaced = vmEvents({ type: "put", entry: entry("vms/v1", vm({}, { hostId: "h1", hostName: "hv-1" })) });
    expect(createdPlaced).toEqual([expect.objectContaining({ kind: "vm.created" }), expect.objectContaining({ kind: "vm.scheduled", hostName: "hv-1", hostId: "h1" })]);
    const placed = vmEvents({ type: "put", prev: entry("vms/v1", vm()), entry: entry("vms/v1", vm({}, { hostId: "h1", hostName: "hv-1" })) });
    expect(placed).toEqual([expect.objectContaining({ kind: "vm.scheduled", hostName: "hv-1", owner: "alice" })]);
    const stuck = vmEvents({ type: "put", prev: entry("vms/v1", vm()), entry: entry("vms/v1", vm({}, { reason: "no host has 4 vcpus" })) });
    expect(stuck).toEqual([expect.objectContaining({ kind: "vm.unschedulable", severity: "warning" })]);
    const failed = vmEvents({
      type: "put",
      prev: entry("vms/v1", vm({}, { hostId: "h1", phase: VmPhase.VM_PHASE_CREATING })),
      entry: entry("vms/v1", vm({}, { hostId: "h1", phase: VmPhase.VM_PHASE_FAILED, reason: "create: no space" })),
    });
    expect(failed).toEqual([
      expect.objectContaining({ kind: "vm.phase", severity: "warning", attributes: { from: "creating", to: "failed", reason: "create: no space" } }),
    ]);
    // A write that changes nothing an operator cares about is no event.
    expect(vmEvents({ type: "put", prev: entry("vms/v1", vm({}, { hostId: "h1" })), entry: entry("vms/v1", vm({}, { hostId: "h1", ip: "10.0.0.2" })) })).toEqual([]);
    expect(vmEvents({ type: "delete", key: "vms/v1", prev: entry("vms/v1", vm()) })).toEqual([expect.objectContaining({ kind: "vm.deleted", vmId: "v1" })]);
  });

  it("hosts joining, leaving, cordoned, unreachable and back", () => {
    const h = Host.fromPartial({ id: "h1", name: "hv-1", address: "10.1.0.1" });
    expect(hostEvents({ type: "put", entry: entry("hosts/h1", h) }).map((e) => e.kind)).toEqual(["host.joined"]);
    expect(hostEvents({ type: "put", prev: entry("hosts/h1", h), entry: entry("hosts/h1", { ...h, cordoned: true }) }).map((e) => e.kind)).toEqual(["host.cordoned"]);
    expect(hostEvents({ type: "delete", key: "hosts/h1", prev: entry("hosts/h1", h) }).map((e) => e.kind)).toEqual(["host.left"]);
    const name = (id: string) => (id === "h1" ? "hv-1" : undefined);
    expect(aliveEvents({ type: "delete", key: "alive/h1" }, name)).toEqual([expect.objectContaining({ kind: "host.unreachable", severity: "warning", hostName: "hv-1" })]);
    expect(aliveEvents({ type: "put", entry: entry("alive/h1", new Uint8Array()) }, name)).toEqual([expect.objectContaining({ kind: "host.ready", hostId: "h1" })]);
    // Lease renewals rewrite nothing (keepalive), but a put over an existing key is no news either.
    expect(aliveEvents({ type: "put", prev: entry("alive/h1", new Uint8Array()), entry: entry("alive/h1", new Uint8Array()) }, name)).toEqual([]);
  });

  it("auth failures and security reports from the audit path, owned only when tied to a known VM", () => {
    const vms = new Map([["v1", vm()]]);
    const hosts = new Map([["hv-1", Host.fromPartial({ id: "h1", name: "hv-1" })]]);
    const look = [(id: string) => vms.get(id), (n: string) => hosts.get(n)] as const;
    const base = { user: "", vm: "", host: "", success: false, detail: "", peer: "" };
    expect(auditEvent({ ...base, event: "vm.create" }, ...look)).toBeUndefined();
    const login = auditEvent({ ...base, event: "auth.failure", user: "alice", detail: "login: bad_password", peer: "ipv4:1.2.3.4:5" }, ...look);
    expect(login).toMatchObject({ kind: "auth.failure", owner: "", severity: "warning", attributes: { user: "alice", peer: "ipv4:1.2.3.4:5" } });
    const spoof = auditEvent({ ...base, event: "security.arp_spoof", vm: "v1", host: "hv-1", detail: "12 forged ARP replies" }, ...look);
    expect(spoof).toMatchObject({ kind: "security.arp_spoof", owner: "alice", vmName: "web", hostId: "h1", message: "12 forged ARP replies" });
    expect(auditEvent({ ...base, event: "security.rule_drift", vm: "gone" }, ...look)).toMatchObject({ owner: "", vmId: "gone" });
  });
});
