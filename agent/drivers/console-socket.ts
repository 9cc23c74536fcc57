// A serial console behind a unix socket (QEMU's socket chardev) as a ConsoleStream.
import { createConnection } from "node:net";
import type { ConsoleStream } from "./driver.js";

export async function connectConsole(path: string, onGone: () => void, timeoutMs = 5_000): Promise<ConsoleStream> {
  const sock = createConnection(path);
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`connecting to ${path}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      resolve();
    });
    sock.once("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
  const closers: ((err?: Error) => void)[] = [];
  let closed = false;
  let error: Error | undefined;
  const done = () => {
    if (closed) return;
    closed = true;
    onGone();
    for (const f of closers) f(error);
  };
  sock.on("error", (e) => {
    error = e;
    sock.destroy();
  });
  sock.on("close", done);
  return {
    onData: (f) => sock.on("data", f),
    onClose: (f) => {
      if (closed) f(error);
      else closers.push(f);
    },
    write: (b) => {
      if (!closed) sock.write(b);
    },
    close: () => sock.destroy(),
  };
}
