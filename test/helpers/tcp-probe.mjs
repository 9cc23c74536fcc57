// A TCP probe for namespace tests, run with `node tcp-probe.mjs MODE ...` inside a namespace.
//   serve PORT                      answer every line "X" with "X <peer address>:<peer port>"
//   ask HOST PORT TOKEN [LPORT]     connect (from local port LPORT), send TOKEN, print the answer
//   hold HOST PORT TOKEN LPORT FILE like ask, then keep the connection until FILE exists,
//                                   ask again on the same connection, print that answer too
// Exits 0 on success, 1 on any error or without an answer in PROBE_TIMEOUT_MS (default 5000).
import { existsSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { createInterface } from "node:readline";

const [mode, ...args] = process.argv.slice(2);
const timeoutMs = Number(process.env.PROBE_TIMEOUT_MS ?? 5000);

if (mode === "serve") {
  createServer((sock) => {
    sock.on("error", () => undefined);
    createInterface({ input: sock }).on("line", (line) => sock.write(`${line} ${sock.remoteAddress}:${sock.remotePort}\n`));
  }).listen(Number(args[0]), "0.0.0.0");
} else if (mode === "ask" || mode === "hold") {
  const [host, port, token, lport, file] = args;
  const sock = createConnection({ host, port: Number(port), ...(lport ? { localPort: Number(lport) } : {}) });
  let timer = setTimeout(() => process.exit(1), timeoutMs);
  sock.on("error", (e) => {
    process.stderr.write(`${e.message}\n`);
    process.exit(1);
  });
  sock.on("connect", () => sock.write(`${token}\n`));
  let answers = 0;
  createInterface({ input: sock }).on("line", (line) => {
    process.stdout.write(`${line}\n`);
    answers++;
    if (mode === "ask" || answers === 2) process.exit(0);
    clearTimeout(timer);
    const poll = setInterval(() => {
      if (!existsSync(file)) return;
      clearInterval(poll);
      timer = setTimeout(() => process.exit(1), timeoutMs);
      sock.write(`${token}-again\n`);
    }, 50);
  });
} else {
  process.stderr.write(`unknown mode ${mode}\n`);
  process.exit(2);
}
