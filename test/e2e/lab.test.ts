// Privileged: a real 2-host lab in network namespaces, torn down and checked for leftovers.
import { randomBytes } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { createLab, destroyLab, labLeftovers, type Lab } from "../../deploy/lab/lab.js";
import { isAlive, run } from "../../common/run.js";
import { pingArgv } from "../../deploy/lab/probe.js";

const prefix = `lt${randomBytes(3).toString("hex")}`;

describe("cluster lab", () => {
  let lab: Lab | undefined;
  afterAll(async () => {
    await destroyLab(prefix);
  });

  it("creates hosts on an underlay that reach each other", async () => {
    lab = await createLab({ prefix, hosts: 2, outside: true });
    expect(lab.hosts.map((h) => h.netns)).toEqual([`${prefix}-h1`, `${prefix}-h2`]);
    const [h1, h2] = lab.hosts as [Lab["hosts"][0], Lab["hosts"][0]];
    expect(h1.address).toMatch(/^10\.99\.\d+\.1$/);

    const ping = await lab.exec(h1, pingArgv(h2.address), { allowFail: true });
    expect(ping.exitCode, ping.stdout + ping.stderr).toBe(0);
    const out = await lab.exec("out", pingArgv(h1.address), { allowFail: true });
    expect(out.exitCode).toBe(0);

    // The root namespace takes no part: the bridge carries no address.
    const br = await run(["ip", "-j", "addr", "show", "dev", `${prefix}-br`]);
    const info = JSON.parse(br.stdout) as { addr_info: unknown[] }[];
    expect(info[0]?.addr_info).toEqual([]);
    const fwd = await lab.exec(h2, ["sysctl", "-n", "net.ipv4.ip_forward"]);
    expect(fwd.stdout.trim()).toBe("1");
  });

  it("destroy removes namespaces, links, state and processes, also after a 'crash'", async () => {
    expect(lab).toBeDefined();
    // A recorded process and an unrecorded one living in a lab namespace.
    const recorded = await lab!.spawn("h1", ["sleep", "600"]);
    await lab!.exec("h2", ["ip", "link", "add", "br7", "type", "bridge"]);
    // Forget the handle, as a crashed test run would: destroy by prefix only.
    lab = undefined;
    await destroyLab(prefix);
    expect(await labLeftovers(prefix)).toEqual([]);
    expect(isAlive(recorded)).toBe(false);
    // Idempotent.
    await destroyLab(prefix);
  });

  it("refuses a prefix that cannot make valid interface names", async () => {
    await expect(createLab({ prefix: "much-too-long-prefix", hosts: 1 })).rejects.toThrow(/prefix/);
  });
});
