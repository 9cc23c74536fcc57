// noidctl login on a real terminal (a pty from script(1)): it asks for the
// password, nothing typed is echoed, then asks for the TOTP code; the session
// is saved. Runs the built noidctl (bin/noidctl.js -> dist/) against a real
// coordinator on real etcd.
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { repoRoot } from "../../deploy/cluster.js";
import { Role } from "../../sdk/index.js";
import { startTestCoordinator, type TestCluster } from "../helpers/coordinator.js";

const PW = "tty password 123";

describe("noidctl login on a terminal", () => {
  let c: TestCluster;
  let dir: string;
  beforeAll(async () => {
    c = await startTestCoordinator();
    await c.client().createUser({ name: "alice", role: Role.ROLE_USER, password: PW });
    dir = mkdtempSync(join(tmpdir(), "noid-tty-"));
  });
  afterAll(async () => {
    await c?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("prompts without echo and logs in", async () => {
    const cmd = `node ${join(repoRoot, "bin/noidctl.js")} --server ${c.address} --insecure login alice`;
    const child = spawn("script", ["-qec", cmd, "/dev/null"], {
      env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: dir, NOID_CONFIG: join(dir, "config.toml"), TERM: "dumb" },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let out = "";
    const waitFor = (text: string) =>
      new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no "${text}" within 60 s; output: ${JSON.stringify(out)}`)), 60_000);
        const check = () => {
          if (out.includes(text)) {
            clearTimeout(t);
            resolve();
          } else setTimeout(check, 50);
        };
        check();
      });
    child.stdout.on("data", (d: Buffer) => (out += d.toString("utf8")));
    child.stderr.on("data", (d: Buffer) => (out += d.toString("utf8")));
    const exited = new Promise<number>((r) => child.on("exit", (code) => r(code ?? -1)));
    try {
      await waitFor("Password: ");
      child.stdin.write(`${PW}\r`);
      await waitFor("TOTP code");
      child.stdin.write("\r"); // alice has no TOTP
      expect(await exited).toBe(0);
    } finally {
      child.kill();
    }
    expect(out).toContain("logged in as alice");
    expect(out).not.toContain(PW);
    expect(readFileSync(join(dir, "config.toml"), "utf8")).toMatch(/token = "[0-9a-f]{64}"/);
  }, 120_000);
});
