// common/run.ts: the one command runner (real processes, no namespaces needed).
import { describe, expect, it } from "vitest";
import { isNoidError } from "../../common/errors.js";
import { isAlive, killProcess, processRef, recordingRunner, run, spawnDetached, wrapArgv } from "../../common/run.js";

describe("command runner", () => {
  it("runs argv without a shell and returns output", async () => {
    const r = await run(["echo", "a b", "$HOME;", "`x`"]);
    expect(r).toEqual({ stdout: "a b $HOME; `x`", stderr: "", exitCode: 0 });
    expect((await run(["cat"], { input: "hello" })).stdout).toBe("hello");
  });

  it("throws INTERNAL carrying argv, exit code and stderr; allowFail returns instead", async () => {
    const err = await run(["ls", "/definitely/not/here"]).catch((e: unknown) => e);
    expect(isNoidError(err, "INTERNAL")).toBe(true);
    expect((err as Error).message).toMatch(/^ls \/definitely\/not\/here: exit code 2: .*No such file/);
    const r = await run(["ls", "/definitely/not/here"], { allowFail: true });
    expect(r.exitCode).toBe(2);
    await expect(run(["no-such-binary-xyz"])).rejects.toThrow(/no-such-binary-xyz: could not run/);
    await expect(run(["sleep", "5"], { timeoutMs: 100 })).rejects.toThrow(/timed out after 100 ms/);
  });

  it("enters namespaces with nsenter, leaving the mount namespace alone unless asked", () => {
    expect(wrapArgv(["ip", "link"])).toEqual(["ip", "link"]);
    expect(wrapArgv(["ip", "link"], { netns: "x-h1" })).toEqual(["nsenter", "--net=/run/netns/x-h1", "--", "ip", "link"]);
    expect(wrapArgv(["wg"], { netns: "n", mountNs: "/run/m" })).toEqual(["nsenter", "--net=/run/netns/n", "--mount=/run/m", "--", "wg"]);
  });

  it("a recording runner captures calls for plan/apply tests", async () => {
    const rr = recordingRunner((argv) => (argv[0] === "false" ? { exitCode: 1, stderr: "nope" } : { stdout: "ok" }));
    expect((await rr(["ip", "a"], { netns: "n" })).stdout).toBe("ok");
    await expect(rr(["false"])).rejects.toThrow(/false: exit code 1: nope/);
    expect(rr.calls.map((c) => c.argv.join(" "))).toEqual(["ip a", "false"]);
  });

  it("spawns a detached process identified by PID and start time, and kills exactly it", async () => {
    const pid = await spawnDetached(["sleep", "60"]);
    const ref = processRef(pid)!;
    expect(isAlive(ref)).toBe(true);
    expect(isAlive({ ...ref, startTime: ref.startTime + 1 })).toBe(false); // a reused PID is not ours
    await killProcess(ref);
    expect(isAlive(ref)).toBe(false);
  });
});
