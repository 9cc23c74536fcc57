// Host posture through the real path: agents report it (registration and session), the
// coordinator stores it, `noidctl hosts` shows it, and with scheduler.require_posture the
// scheduler places nothing on a failing host until it reports a passing posture.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run as noidctl } from "../../cli/program.js";
import type { HostPosture } from "../../gen/noid/v1/host.js";
import { VmPhase } from "../../gen/noid/v1/vm.js";
import { SimAgent } from "../helpers/sim-agent.js";
import { eventually, startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

let c: TestCluster;
const agents: SimAgent[] = [];
const check = (name: string, ok: boolean, optional = false) => ({ name, ok, optional, detail: ok ? "fine" : "not fine" });
const failing: HostPosture = { ok: false, checkedAt: undefined, checks: [check("ssh-password-off", true), check("firewall", false), check("fail2ban", false, true)] };
const passing: HostPosture = { ok: true, checkedAt: undefined, checks: [check("ssh-password-off", true), check("firewall", true), check("fail2ban", false, true)] };

async function cli(args: string[]): Promise<{ code: number; out: string }> {
  let out = "";
  const code = await noidctl(args, {
    env: { NOID_SERVER: c.address, NOID_TOKEN: c.adminToken, NOID_INSECURE: "1", NOID_CONFIG: "/nonexistent/config.toml" },
    io: { stdout: (x: string) => void (out += x), stderr: (x: string) => void (out += x), readStdin: async () => "", isTTY: false, cwd: "/" },
  });
  return { code, out };
}

beforeAll(async () => {
  c = await startTestCoordinator({ scheduler: { require_posture: true } });
});
afterAll(async () => {
  agents.forEach((a) => a.close());
  await c?.stop();
});

describe("host posture", () => {
  it("a host that reports a failing posture gets no VM; the reason says why", async () => {
    const a = new SimAgent({ address: c.address, token: c.adminToken, name: "weak", posture: failing, autoRun: true });
    agents.push(a);
    await a.connect();
    const admin = c.client();
    await admin.createVm("p1", { vcpus: 1, memoryMb: 128, diskGb: 1 }).catch((e: { code?: string }) => {
      // No fitting host: the VM is kept PENDING and the call says so.
      expect(e.code).toBe("RESOURCE_EXHAUSTED");
    });
    const vm = await eventually(async () => {
      const v = await admin.getVm("p1");
      return v.status?.reason.includes("posture") ? v : undefined;
    }, 10_000, "the unplaced reason to name the posture");
    expect(vm.status?.phase).toBe(VmPhase.VM_PHASE_PENDING);
    expect(vm.status?.reason).toMatch(/1 fails the required host posture/);

    const hosts = await cli(["hosts"]);
    expect(hosts.code).toBe(0);
    expect(hosts.out).toMatch(/weak\s.*fail: firewall/);
    const detail = await cli(["host", "posture", "weak"]);
    expect(detail.out).toMatch(/FAIL firewall\s+not fine/);
    expect(detail.out).toMatch(/opt  fail2ban/);
  });

  it("once the host reports a passing posture over its session, the VM is placed there", async () => {
    const a = agents[0]!;
    a.send({ kind: { $case: "posture", value: passing } });
    const admin = c.client();
    const vm = await eventually(async () => {
      const v = await admin.getVm("p1");
      return v.status?.hostName === "weak" ? v : undefined;
    }, 10_000, "p1 to be placed");
    expect(vm.status?.hostName).toBe("weak");
    const h = await admin.getHost("weak");
    expect(h.posture?.ok).toBe(true);
    expect(h.posture?.checkedAt).toBeInstanceOf(Date);
    expect((await cli(["hosts"])).out).toMatch(/weak\s.*\sok/);
  });

  it("a posture whose verdict contradicts its checks is refused and nothing is registered", async () => {
    const liar = new SimAgent({ address: c.address, token: c.adminToken, name: "liar", posture: { ...failing, ok: true } });
    agents.push(liar);
    await expect(liar.register()).rejects.toMatchObject({ code: 3, details: expect.stringContaining("posture.ok") });
    await expect(c.client().getHost("liar")).rejects.toMatchObject({ code: "NOT_FOUND" });
  });
});
