// noidctl piped into a reader that stops early (`noidctl --help | head -1`) ends quietly.
import { spawn } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

const bin = join(fileURLToPath(new URL("../..", import.meta.url)), "bin", "noidctl.js");

describe("noidctl with its output closed early", () => {
  it("exits 0 without an EPIPE stack trace when the reader closes the pipe", async () => {
    const child = spawn(process.execPath, [bin, "--help"], { stdio: ["ignore", "pipe", "pipe"] });
    let err = "";
    child.stderr.on("data", (d: Buffer) => (err += d.toString()));
    // Read nothing: close our end at once, as `head -c0` would.
    child.stdout.destroy();
    const code = await new Promise<number | null>((r) => child.on("exit", (c) => r(c)));
    expect(err).not.toContain("EPIPE");
    expect(code).toBe(0);
  });
});
