// noidctl's composition root: the only module that touches process.*.
import { run } from "./program.js";

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

const ac = new AbortController();
process.once("SIGINT", () => {
  // Let watches and waits end cleanly; anything still busy is cut short.
  ac.abort();
  setTimeout(() => process.exit(130), 1_000).unref();
});

process.exitCode = await run(process.argv.slice(2), {
  env: process.env,
  io: {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    readStdin,
    isTTY: process.stdout.isTTY === true,
    cwd: process.cwd(),
  },
  signal: ac.signal,
});
