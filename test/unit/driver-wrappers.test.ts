// The decorators around a driver (tenant network attachment, metrics) must offer every optional
// operation the driver has: a missing pass-through silently turns a capability off.
import { describe, expect, it } from "vitest";
import type { HypervisorDriver } from "../../agent/drivers/driver.js";
import { instrumentDriver, AgentMetrics } from "../../agent/metrics.js";
import { NetworkedDriver } from "../../agent/network/attach.js";

const OPTIONAL = ["exec", "execStream", "checkpoint", "restore", "saveState", "loadState", "continueSaved", "announce", "pause", "resume", "console", "logPath"] as const;

function fullDriver(calls: string[]): HypervisorDriver {
  const op = (name: string) => async () => {
    calls.push(name);
    return undefined as never;
  };
  const d: Record<string, unknown> = { name: "fake", capabilities: () => ({ exec: true, checkpoint: true, restore: true, resourceLimits: true }) };
  for (const m of ["create", "start", "stop", "destroy", "inspect", "list", "recover", ...OPTIONAL]) d[m] = op(m);
  return d as unknown as HypervisorDriver;
}

describe("driver decorators", () => {
  const mesh = { attachment: () => undefined, syncGuards: async () => undefined, guarded: () => true } as unknown as ConstructorParameters<typeof NetworkedDriver>[1];
  it.each([
    ["NetworkedDriver", (d: HypervisorDriver) => new NetworkedDriver(d, mesh)],
    ["instrumentDriver", (d: HypervisorDriver) => instrumentDriver(d, new AgentMetrics())],
  ])("%s passes every optional operation through", async (_name, wrap) => {
    const calls: string[] = [];
    const w = wrap(fullDriver(calls)) as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
    for (const m of OPTIONAL) {
      expect(typeof w[m], m).toBe("function");
      await w[m]!("vm-1", [], {});
    }
    expect(calls).toEqual([...OPTIONAL]);
  });
  it("saveState's options reach the driver through both (a migration keeps the VM paused)", async () => {
    const seen: unknown[] = [];
    const d = fullDriver([]);
    d.saveState = async (_id, _dir, o) => (seen.push(o), []);
    await instrumentDriver(new NetworkedDriver(d, mesh), new AgentMetrics()).saveState!("vm-1", "/x", { keepPaused: true });
    expect(seen).toEqual([{ keepPaused: true }]);
  });
  it("a driver without an optional operation does not gain one", () => {
    const bare = fullDriver([]) as unknown as Record<string, unknown>;
    for (const m of OPTIONAL) delete bare[m];
    const w = instrumentDriver(new NetworkedDriver(bare as unknown as HypervisorDriver, mesh), new AgentMetrics()) as unknown as Record<string, unknown>;
    for (const m of OPTIONAL) expect(w[m], m).toBeUndefined();
  });
});
