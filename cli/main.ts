// noidctl's composition root: the only module that touches process.*.
import { run } from "./program.js";
import { promptLine } from "./prompt.js";
import { dropTlsIpServernameWarning } from "../common/node-warnings.js";

// grpc-js's IP server names make Node warn (DEP0123) on every command: dropped (common/node-warnings.ts).
dropTlsIpServernameWarning();

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** A yes/no question on the controlling terminal (stdin may carry a token). */
async function confirm(question: string): Promise<boolean> {
  const { openSync, closeSync, createReadStream, writeSync } = await import("node:fs");
  let fd: number;
  try {
    fd = openSync("/dev/tty", "r+");
  } catch {
    return false;
  }
  writeSync(fd, question);
  const answer = await new Promise<string>((resolve) => {
    const rs = createReadStream("", { fd, autoClose: false });
    rs.once("data", (d) => {
      rs.destroy();
      resolve(String(d));
    });
    rs.once("error", () => resolve(""));
  });
  closeSync(fd);
  return /^y(es)?$/i.test(answer.trim());
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

// The reader went away (`noidctl ... | head`): stop quietly, as a SIGPIPE would, instead of
// dying on an unhandled EPIPE with a stack trace.
process.stdout.on("error", (err: NodeJS.ErrnoException) => {
  if (err.code !== "EPIPE") throw err;
  ac.abort();
  process.exit(process.exitCode ?? 0);
});

process.exitCode = await run(process.argv.slice(2), {
  env: process.env,
  io: {
    stdout: (s) => void process.stdout.write(s),
    stderr: (s) => void process.stderr.write(s),
    readStdin,
    isTTY: process.stdout.isTTY === true,
    ...(process.stderr.isTTY ? { confirm } : {}),
    ...(process.stdin.isTTY ? { prompt: (q: string, o: { echo: boolean }) => promptLine(process.stdin, (s) => void process.stderr.write(s), q, o) } : {}),
    cwd: process.cwd(),
    stdinStream: process.stdin,
    onInterrupt: (f) => {
      interruptHandlers.add(f);
      return () => interruptHandlers.delete(f);
    },
    ...(process.stdin.isTTY ? { rawMode: (on: boolean) => void process.stdin.setRawMode(on) } : {}),
  },
  signal: ac.signal,
});
// exec -i may leave a read of stdin pending after the command ended.
process.stdin.destroy();
