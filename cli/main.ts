// noidctl's composition root: the only module that touches process.*.
import { run } from "./program.js";

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

const ac = new AbortController();
const interruptHandlers = new Set<() => void>();
process.on("SIGINT", () => {
  // A command that takes Ctrl-C itself (exec forwards it to the VM) gets it.
  if (interruptHandlers.size) {
    for (const f of interruptHandlers) f();
    return;
  }
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
    stdinStream: process.stdin,
    onInterrupt: (f) => {
      interruptHandlers.add(f);
      return () => interruptHandlers.delete(f);
    },
  },
  signal: ac.signal,
});
// exec -i may leave a read of stdin pending after the command ended.
process.stdin.destroy();
