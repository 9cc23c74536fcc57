// Port exposure, pure parts: spec parsing, the ip noid_ports ruleset and its rule-by-rule
// plan against what nft reads back, the agent's spec from snapshot + mesh view, the
// coordinator's per-host snapshot, and request validation.
import { describe, expect, it } from "vitest";
import { checkHostname, parseHostPortSpec, parsePortSpec } from "../../common/ports.js";
import { NoidError } from "../../common/errors.js";
import { type PortsSpec, appliedPorts, planPorts, portRules, portsScript, renderPorts } from "../../agent/network/ports-ruleset.js";
import { PortsController, portsSpecOf, slotsOf } from "../../agent/network/ports.js";
import { silentLogger } from "../../common/logger.js";
import { portSnapshotFor } from "../../coordinator/ports/port-feed.js";
import { freeMeshPort, placedHost, MESH_PORT_MIN } from "../../coordinator/ports/port-repo.js";
import { exposeSpecOf, stateOf } from "../../coordinator/services/port-service.js";
import { checkPortLimit } from "../../coordinator/limits.js";
import { HttpRoute, PortMapping, PortStatusRecord } from "../../gen/noid/v1/port.js";
import { Vm, VmDesiredState } from "../../gen/noid/v1/vm.js";

const code = (f: () => unknown): string => {
  try {
    f();
    return "OK";
  } catch (e) {
    return e instanceof NoidError ? e.code : String(e);
  }
};

describe("port specs", () => {
  it("parses HOST:VM/PROTO, defaults tcp and the same port", () => {
    expect(parsePortSpec("8080:80/tcp")).toEqual({ hostPort: 8080, vmPort: 80, protocol: "tcp" });
    expect(parsePortSpec("5353:53/UDP")).toEqual({ hostPort: 5353, vmPort: 53, protocol: "udp" });
    expect(parsePortSpec("8080:80")).toEqual({ hostPort: 8080, vmPort: 80, protocol: "tcp" });
    expect(parsePortSpec("9000")).toEqual({ hostPort: 9000, vmPort: 9000, protocol: "tcp" });
    expect(parseHostPortSpec("8080/udp")).toEqual({ hostPort: 8080, protocol: "udp" });
  });

  it("refuses ranges, bad ports and protocols, addresses", () => {
    for (const bad of ["8080-8090:80/tcp", "8080:80-90/tcp", "0:80", "65536:80", "a:80", "8080:80/sctp", "1.2.3.4:8080:80", "8080:80/tcp/x", "", "-1"]) {
      expect(code(() => parsePortSpec(bad)), bad).toBe("INVALID_ARGUMENT");
    }
    expect(() => parsePortSpec("8080-8090:80/tcp")).toThrow(/range/);
    expect(code(() => parseHostPortSpec("8080:80/tcp"))).toBe("INVALID_ARGUMENT");
  });

  it("checks HTTP hostnames", () => {
    expect(checkHostname("h", "App.Example.Test")).toBe("app.example.test");
    for (const bad of ["localhost", "*.example.test", "a..b", "-a.test", "a.test:80", "10.0.0.1", "a_b.test", "x".repeat(64) + ".test", `${"a.".repeat(127)}test`]) {
      expect(code(() => checkHostname("h", bad)), bad).toBe("INVALID_ARGUMENT");
    }
  });

  it("takes an expose request as text or as fields, not both", () => {
    expect(exposeSpecOf({ spec: "8080:80/tcp", hostPort: 0, vmPort: 0, protocol: "" })).toEqual({ hostPort: 8080, vmPort: 80, protocol: "tcp" });
    expect(exposeSpecOf({ spec: "", hostPort: 8080, vmPort: 0, protocol: "" })).toEqual({ hostPort: 8080, vmPort: 8080, protocol: "tcp" });
    expect(code(() => exposeSpecOf({ spec: "8080:80", hostPort: 8080, vmPort: 0, protocol: "" }))).toBe("INVALID_ARGUMENT");
    expect(code(() => exposeSpecOf({ spec: "", hostPort: 0, vmPort: 0, protocol: "" }))).toBe("INVALID_ARGUMENT");
    expect(code(() => exposeSpecOf({ spec: "", hostPort: 70000, vmPort: 0, protocol: "" }))).toBe("INVALID_ARGUMENT");
  });

  it("limits a user's exposures", () => {
    const limits = { max_vms_per_user: 1, max_total_vms: 1, max_vcpus_per_vm: 1, max_memory_per_vm: 16, max_disk_per_vm: 1, max_exposed_ports_per_user: 2 };
    expect(code(() => checkPortLimit(limits, "alice", 1))).toBe("OK");
    expect(code(() => checkPortLimit(limits, "alice", 2))).toBe("RESOURCE_EXHAUSTED");
  });
});

const SPEC: PortsSpec = {
  uplink: "eth0",
  wgIfname: "wg-noid",
  meshIp: "100.64.0.2",
  ports: [
    { protocol: "udp", hostPort: 5353, vmIp: "10.0.0.5", vmPort: 53, slot: 2, mesh: false },
    { protocol: "tcp", hostPort: 8080, vmIp: "10.0.0.5", vmPort: 80, slot: 1, mesh: false },
    { protocol: "tcp", hostPort: 40000, vmIp: "10.0.0.9", vmPort: 8000, slot: 1, mesh: true },
  ],
};

/** What `nft -j list table ip noid_ports` shows for the rules (tokens as nft 1.0.6 prints them). */
function listed(spec: PortsSpec, tweak: (rules: Record<string, unknown>[]) => Record<string, unknown>[] = (r) => r): string {
  const chains = [
    { chain: { family: "ip", table: "noid_ports", name: "pre_nat", type: "nat", hook: "prerouting", prio: -100, policy: "accept" } },
    { chain: { family: "ip", table: "noid_ports", name: "out_raw", type: "filter", hook: "output", prio: -300, policy: "accept" } },
    { chain: { family: "ip", table: "noid_ports", name: "out_nat", type: "nat", hook: "output", prio: -100, policy: "accept" } },
  ];
  let handle = 10;
  const rules = portRules(spec).map((r) => ({
    family: "ip",
    table: "noid_ports",
    chain: r.chain,
    handle: handle++,
    comment: r.comment,
    // The literals as nft reads them back (numbers as numbers where nft prints numbers).
    expr: r.literals.map((l) => ({ match: { right: /^\d+$/.test(l) ? Number(l) : l } })),
  }));
  return JSON.stringify({ nftables: [...chains, ...tweak(rules).map((rule) => ({ rule }))] });
}

describe("the ports ruleset", () => {
  it("renders one rule per exposure: public from the uplink to local addresses, mesh from WireGuard and from the host itself", () => {
    const text = renderPorts(SPEC);
    expect(text).toContain('iifname "eth0" fib daddr type local tcp dport 8080 meta mark set 0x6e6f0001 ct mark set 0x6e6f0001 dnat to 10.0.0.5:80 comment "tcp/8080"');
    expect(text).toContain('iifname "eth0" fib daddr type local udp dport 5353 meta mark set 0x6e6f0002 ct mark set 0x6e6f0002 dnat to 10.0.0.5:53 comment "udp/5353"');
    expect(text).toContain('iifname "wg-noid" tcp dport 40000 meta mark set 0x6e6f0001 ct mark set 0x6e6f0001 dnat to 10.0.0.9:8000 comment "mesh/40000"');
    expect(text).toContain('ip daddr 100.64.0.2 tcp dport 40000 ct zone set 1 comment "mesh/40000"');
    // Mesh ports are never reachable from the uplink.
    expect(text).not.toMatch(/iifname "eth0"[^\n]*40000/);
    expect(text.startsWith("table ip noid_ports\ndelete table ip noid_ports\n")).toBe(true);
  });

  it("refuses what it cannot render safely", () => {
    const bad = (p: Partial<PortsSpec["ports"][number]>, s: Partial<PortsSpec> = {}) =>
      code(() => portRules({ ...SPEC, ...s, ports: [{ ...SPEC.ports[1]!, ...p }] }));
    expect(bad({ vmIp: "10.0.0.5; flush ruleset" })).toBe("INVALID_ARGUMENT");
    expect(bad({ slot: 0 })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostPort: 0 })).toBe("INVALID_ARGUMENT");
    expect(bad({ mesh: true, protocol: "udp" })).toBe("INVALID_ARGUMENT");
    expect(bad({}, { uplink: 'eth0" accept' })).toBe("INVALID_ARGUMENT");
    expect(code(() => portRules({ ...SPEC, ports: [SPEC.ports[1]!, SPEC.ports[1]!] }))).toBe("INVALID_ARGUMENT");
  });

  it("plans nothing when nft holds the spec; replaces a missing table or a changed chain", () => {
    expect(planPorts(SPEC, listed(SPEC))).toEqual([]);
    expect(appliedPorts(SPEC, listed(SPEC))).toEqual(["mesh/40000", "tcp/8080", "udp/5353"]);
    expect(planPorts(SPEC, undefined).map((a) => a.kind)).toEqual(["replace"]);
    const hooked = listed(SPEC).replace('"prio":-300', '"prio":0');
    expect(planPorts(SPEC, hooked).map((a) => a.kind)).toEqual(["replace"]);
    expect(appliedPorts(SPEC, undefined)).toEqual([]);
  });

  it("diffs rule by rule: adds a new exposure, deletes a removed one, leaves the rest alone", () => {
    const next: PortsSpec = { ...SPEC, ports: [...SPEC.ports.slice(1), { protocol: "tcp", hostPort: 9090, vmIp: "10.0.0.7", vmPort: 90, slot: 1, mesh: false }] };
    const plan = planPorts(next, listed(SPEC));
    expect(plan.map((a) => (a.kind === "add" ? `add ${a.rule.comment}` : a.kind === "delete" ? `delete ${a.handle} ${a.comment}` : a.kind))).toEqual([
      "delete 14 udp/5353",
      "add tcp/9090",
    ]);
    expect(portsScript(plan)).toBe(
      'delete rule ip noid_ports pre_nat handle 14\nadd rule ip noid_ports pre_nat iifname "eth0" fib daddr type local tcp dport 9090 meta mark set 0x6e6f0001 ct mark set 0x6e6f0001 dnat to 10.0.0.7:90 comment "tcp/9090"\n',
    );
  });

  it("finds drift: a rule deleted, altered, duplicated or foreign", () => {
    const gone = listed(SPEC, (r) => r.filter((x) => x.comment !== "tcp/8080"));
    expect(planPorts(SPEC, gone).map((a) => a.kind)).toEqual(["add"]);
    expect(appliedPorts(SPEC, gone)).toEqual(["mesh/40000", "udp/5353"]);
    const altered = listed(SPEC, (r) => r.map((x) => (x.comment === "tcp/8080" ? { ...x, expr: [{ match: { right: "10.0.0.66" } }] } : x)));
    expect(planPorts(SPEC, altered).map((a) => `${a.kind}${a.kind === "delete" ? ` ${a.why.split(" ")[0]}` : ""}`)).toEqual(["delete altered", "add"]);
    const dup = listed(SPEC, (r) => [...r, { ...r[1]!, handle: 99 }]);
    expect(planPorts(SPEC, dup).map((a) => (a.kind === "delete" ? `${a.handle} ${a.why}` : a.kind))).toEqual(["99 duplicate"]);
    const foreign = listed(SPEC, (r) => [...r, { ...r[0]!, handle: 77, comment: "tcp/22" }]);
    expect(planPorts(SPEC, foreign).map((a) => (a.kind === "delete" ? `${a.comment} ${a.why}` : a.kind))).toEqual(["tcp/22 not exposed"]);
  });
});

describe("the agent's ports spec", () => {
  const view = {
    selfId: "h1",
    members: [{ hostId: "h1", meshIp: "100.64.0.2" }, { hostId: "h2", meshIp: "100.64.0.3" }],
    local: new Map([
      ["vmA", { ip: "10.0.0.5", vni: 4101 }],
      ["vmB", { ip: "10.0.0.5", vni: 4102 }],
      ["vmC", { ip: "10.0.0.6", vni: 4103 }],
    ]),
  } as unknown as Parameters<typeof portsSpecOf>[1];

  it("resolves each VM's address and its network's slot; waits for what is not there yet", () => {
    const slots = slotsOf([
      { pref: 5000, iif: "vmnet4101", table: 0x6e6f0001 },
      { pref: 5000, fwmark: 0x6e6f0001, table: 0x6e6f0001 },
      { pref: 5000, iif: "vmnet4102", table: 0x6e6f0003 },
      { pref: 100, iif: "vmnet4103", table: 0x6e6f0009 }, // not ours: another preference
    ]);
    expect([...slots]).toEqual([[4101, 1], [4102, 3]]);
    const snap = {
      ports: [
        { vmId: "vmA", protocol: "tcp", hostPort: 8080, vmPort: 80, mesh: false },
        { vmId: "vmB", protocol: "udp", hostPort: 8081, vmPort: 80, mesh: false },
        { vmId: "vmC", protocol: "tcp", hostPort: 8082, vmPort: 80, mesh: false },
        { vmId: "gone", protocol: "tcp", hostPort: 40000, vmPort: 80, mesh: true },
      ],
      routes: [],
    };
    const { spec, waiting } = portsSpecOf(snap, view, slots, { uplink: "eth0", wgIfname: "wg0" });
    expect(spec.meshIp).toBe("100.64.0.2");
    expect(spec.ports).toEqual([
      { protocol: "tcp", hostPort: 8080, vmIp: "10.0.0.5", vmPort: 80, slot: 1, mesh: false },
      { protocol: "udp", hostPort: 8081, vmIp: "10.0.0.5", vmPort: 80, slot: 3, mesh: false },
    ]);
    expect(waiting).toEqual(["tcp/8082", "mesh/40000"]);
    expect(portsSpecOf(snap, undefined, slots, { uplink: "eth0", wgIfname: "wg0" }).spec.ports).toEqual([]);
  });
});

describe("the coordinator's side", () => {
  const port = (hostId: string, hostPort: number): PortMapping => PortMapping.fromPartial({ hostId, hostPort, vmId: `vm-${hostPort}`, protocol: "tcp", vmPort: 80 });
  const route = (hostname: string, hostId: string, meshPort: number): HttpRoute => HttpRoute.fromPartial({ hostname, hostId, meshPort, vmId: `vm-${hostname}`, vmPort: 8000 });

  it("gives each host its own ports, the mesh side of routes to its VMs, and every route with its upstream", () => {
    const snap = portSnapshotFor("h1", [port("h1", 8080), port("h2", 8080), port("h1", 22)], [route("b.test", "h1", 40000), route("a.test", "h2", 40000), route("c.test", "h3", 40001)], (id) =>
      id === "h3" ? undefined : id === "h1" ? "100.64.0.1" : "100.64.0.2",
    );
    expect(snap.ports.map((p) => `${p.mesh ? "mesh" : p.protocol}/${p.hostPort}->${p.vmPort}`)).toEqual(["mesh/40000->8000", "tcp/22->80", "tcp/8080->80"]);
    expect(snap.routes.map((r) => `${r.hostname}=${r.upstream}`)).toEqual(["a.test=100.64.0.2:40000", "b.test=100.64.0.1:40000"]);
  });

  it("hands out the lowest free mesh port", () => {
    expect(freeMeshPort(new Set())).toBe(MESH_PORT_MIN);
    expect(freeMeshPort(new Set([MESH_PORT_MIN, MESH_PORT_MIN + 2]))).toBe(MESH_PORT_MIN + 1);
  });

  it("exposes only placed VMs that are not being destroyed", () => {
    const vm = (status: Partial<NonNullable<Vm["status"]>>, desired = VmDesiredState.VM_DESIRED_STATE_RUNNING) => Vm.fromPartial({ name: "web", desiredState: desired, status });
    expect(placedHost(vm({ hostId: "h1", hostName: "host1", ip: "10.0.0.2/24" }))).toEqual({ hostId: "h1", hostName: "host1" });
    expect(code(() => placedHost(vm({ hostId: "" })))).toBe("FAILED_PRECONDITION");
    expect(code(() => placedHost(vm({ hostId: "h1", ip: "10.0.0.2" }, VmDesiredState.VM_DESIRED_STATE_DELETED)))).toBe("FAILED_PRECONDITION");
  });

  it("shows each exposure's state from its host's report", () => {
    expect(stateOf(undefined, false)).toBe("pending");
    expect(stateOf(PortStatusRecord.fromPartial({ applied: ["tcp/8080"] }), true)).toBe("applied");
    expect(stateOf(PortStatusRecord.fromPartial({ error: "nft: boom" }), false)).toBe("error: nft: boom");
  });
});

describe("the agent's ports controller (nft faked: listings as nft -j prints them)", () => {
  const view = {
    selfId: "h1",
    members: [{ hostId: "h1", meshIp: "100.64.0.2" }],
    local: new Map([["vmA", { ip: "10.0.0.5", vni: 4101 }]]),
  } as unknown as Parameters<PortsController["setView"]>[0];
  const ipRules = JSON.stringify([{ priority: 5000, iif: "vmnet4101", table: String(0x6e6f0001) }]);
  const port = (hostPort: number) => ({ vmId: "vmA", protocol: "tcp", hostPort, vmPort: 80, mesh: false });
  const snap = (...ports: number[]) => ({ ports: ports.map(port), routes: [] }) as unknown as Parameters<PortsController["setSnapshot"]>[0];
  const specOf = (s: ReturnType<typeof snap>) => portsSpecOf(s, view, slotsOf([{ pref: 5000, iif: "vmnet4101", table: 0x6e6f0001 }]), { uplink: "eth0", wgIfname: "wg-noid" }).spec;

  /** A fake host: the table as the last `nft -f` left it, and edits "someone else" makes to what a listing shows from then on. */
  function host() {
    const h = {
      table: undefined as PortsSpec | undefined,
      want: undefined as PortsSpec | undefined,
      /** Edits applied to the table at the listing with this index (0-based), as if made just before it. */
      editAt: new Map<number, (r: Record<string, unknown>[]) => Record<string, unknown>[]>(),
      edits: [] as ((r: Record<string, unknown>[]) => Record<string, unknown>[])[],
      lists: 0,
      security: [] as string[],
      errors: [] as string[],
    };
    const runner = async (argv: readonly string[]) => {
      const cmd = argv.join(" ");
      if (cmd === "ip -j rule show") return { exitCode: 0, stdout: ipRules, stderr: "" };
      if (cmd.startsWith("nft -j list table")) {
        const e = h.editAt.get(h.lists++);
        if (e) h.edits.push(e);
        if (!h.table) return { exitCode: 1, stdout: "", stderr: "No such file or directory" };
        return { exitCode: 0, stdout: listed(h.table, (r) => h.edits.reduce((acc, f) => f(acc), r)), stderr: "" };
      }
      if (cmd === "nft -f -") {
        h.table = h.want; // the controller's script brings the table to its spec
        h.edits = [];
        return { exitCode: 0, stdout: "", stderr: "" };
      }
      throw new Error(`unexpected command ${cmd}`);
    };
    const c = new PortsController({
      wgIfname: "wg-noid",
      uplink: async () => "eth0",
      onSecurity: (e) => h.security.push(e.detail),
      onApplied: (_a, err) => void (err && h.errors.push(err)),
      logger: silentLogger(),
      runner: runner as never,
    });
    return { h, c };
  }
  /** A host whose first pass built the table with tcp/8080. */
  async function started() {
    const { h, c } = host();
    c.setView(view);
    h.want = specOf(snap(8080));
    c.setSnapshot(snap(8080));
    await c.sync();
    return { h, c };
  }
  const without = (comment: string) => (r: Record<string, unknown>[]) => r.filter((x) => x.comment !== comment);

  it("reports a rule deleted behind its back even when the same pass also applies a new exposure", async () => {
    const { h, c } = await started();
    expect(h.security).toEqual([]); // the first pass builds the table: nothing to call drift
    // tcp/8080 is deleted by someone else, and a new exposure arrives: one pass does both.
    h.editAt.set(h.lists, without("tcp/8080"));
    h.want = specOf(snap(8080, 9090));
    c.setSnapshot(snap(8080, 9090));
    await c.sync();
    expect(h.security).toHaveLength(1);
    expect(h.security[0]).toMatch(/tcp\/8080/);
    expect(h.security[0]).not.toMatch(/9090/);
    expect(h.errors).toEqual([]);
  });

  it("reports and repairs, in the same pass, a rule deleted between its listing and its check", async () => {
    const { h, c } = await started();
    h.want = specOf(snap(8080, 9090));
    // The pass lists (sees tcp/8080), applies tcp/9090, and lists again: tcp/8080 is gone by then.
    h.editAt.set(h.lists + 1, without("tcp/8080"));
    c.setSnapshot(snap(8080, 9090));
    await c.sync();
    expect(h.errors).toEqual([]);
    expect(h.security).toHaveLength(1);
    expect(h.security[0]).toMatch(/tcp\/8080/);
    // Repaired: a listing now shows both rules.
    expect(h.edits).toEqual([]);
  });
});
