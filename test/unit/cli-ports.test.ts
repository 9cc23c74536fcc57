// noidctl expose / unexpose / ports in-process: real commander parsing and SDK against a
// grpc-js server on a random port standing in for the coordinator's PortService (which
// validates: the CLI passes the spec text through, so a range gets the server's answer).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { run } from "../../cli/program.js";
import { NoidError } from "../../common/errors.js";
import { parsePortSpec } from "../../common/ports.js";
import { HttpRoute, PortMapping, PortServiceService, type ExposePortRequest, type PortServiceServer, type UnexposePortRequest } from "../../gen/noid/v1/port.js";

const TOKEN = "0123456789abcdef".repeat(4);
const seen = { expose: [] as ExposePortRequest[], unexpose: [] as UnexposePortRequest[] };
const created = new Date("2025-01-15T10:00:00Z");

const impl: PortServiceServer = {
  exposePort: (call, cb) => {
    seen.expose.push(call.request);
    const r = call.request;
    if (r.httpHost) return cb(null, { port: undefined, route: HttpRoute.fromPartial({ hostname: r.httpHost, vmName: r.vm, vmPort: r.vmPort, hostName: "host1", meshPort: 40000, createdAt: created }) });
    try {
      const s = parsePortSpec(r.spec);
      cb(null, { port: PortMapping.fromPartial({ vmName: r.vm, hostName: "host1", ...s, createdAt: created }), route: undefined });
    } catch (e) {
      cb({ code: status.INVALID_ARGUMENT, details: (e as NoidError).message });
    }
  },
  unexposePort: (call, cb) => {
    seen.unexpose.push(call.request);
    cb(null, {});
  },
  listPorts: (_call, cb) =>
    cb(null, {
      ports: [PortMapping.fromPartial({ vmName: "web", protocol: "tcp", hostPort: 8080, vmPort: 80, hostName: "host1", address: "10.0.0.1", state: "applied", owner: "alice", createdAt: created })],
      routes: [HttpRoute.fromPartial({ hostname: "app.example.test", vmName: "web", vmPort: 80, hostName: "host1", state: "pending", ingress: [], owner: "alice", createdAt: created })],
    }),
};

let server: Server;
let addr = "";
let dir = "";

beforeAll(async () => {
  server = new Server();
  server.addService(PortServiceService, impl);
  const port = await new Promise<number>((resolve, reject) => server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))));
  addr = `127.0.0.1:${port}`;
  dir = mkdtempSync(join(tmpdir(), "noid-cli-ports-"));
});
afterAll(() => {
  server?.forceShutdown();
  rmSync(dir, { recursive: true, force: true });
});

async function cli(args: string[]) {
  let stdout = "";
  let stderr = "";
  const code = await run(["--server", addr, "--insecure", ...args], {
    env: { HOME: dir, NOID_CONFIG: join(dir, "config.toml"), NOID_TOKEN: TOKEN },
    io: { stdout: (s) => void (stdout += s), stderr: (s) => void (stderr += s), readStdin: async () => "", isTTY: false, cwd: dir },
    now: () => new Date("2025-01-15T10:30:00Z"),
  });
  return { code, stdout, stderr };
}

describe("noidctl expose / unexpose / ports", () => {
  it("exposes an L4 port and an HTTP route", async () => {
    expect(await cli(["expose", "web", "8080:80/tcp"])).toMatchObject({ code: 0, stdout: "tcp port 8080 of host host1 exposed to web:80\n" });
    expect(seen.expose.at(-1)).toMatchObject({ vm: "web", spec: "8080:80/tcp", httpHost: "" });
    expect(await cli(["expose", "web", "--http", "app.example.test", "--port", "8000"])).toMatchObject({ code: 0, stdout: "http://app.example.test/ routed to web:8000\n" });
    expect(seen.expose.at(-1)).toMatchObject({ vm: "web", spec: "", httpHost: "app.example.test", vmPort: 8000 });
  });

  it("passes a range to the server, which refuses it (exit 1, its message)", async () => {
    const r = await cli(["expose", "web", "8080-8090:80/tcp"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/port range/);
  });

  it("refuses bad usage locally (exit 2)", async () => {
    const n = seen.expose.length;
    expect((await cli(["expose", "web"])).code).toBe(2);
    expect((await cli(["expose", "web", "8080:80", "--http", "a.test"])).code).toBe(2);
    expect((await cli(["expose", "web", "--http", "a.test", "--port", "x"])).code).toBe(2);
    expect((await cli(["expose", "web", "8080:80", "--port", "80"])).code).toBe(2);
    expect((await cli(["unexpose", "web"])).code).toBe(2);
    expect(seen.expose.length).toBe(n);
  });

  it("unexposes a port and a route", async () => {
    expect((await cli(["unexpose", "web", "8080/tcp"])).code).toBe(0);
    expect((await cli(["unexpose", "web", "--http", "app.example.test"])).code).toBe(0);
    expect(seen.unexpose.map((u) => [u.spec, u.httpHost])).toEqual([["8080/tcp", ""], ["", "app.example.test"]]);
  });

  it("lists ports and routes in one table, and as JSON", async () => {
    const t = await cli(["ports"]);
    expect(t.code).toBe(0);
    const lines = t.stdout.trim().split("\n").map((l) => l.trim().split(/\s{2,}/));
    expect(lines).toEqual([
      ["VM", "PROTO", "PUBLIC", "VM PORT", "HOST", "STATE"],
      ["web", "tcp", "10.0.0.1:8080", "80", "host1", "applied"],
      ["web", "http", "app.example.test", "80", "host1", "pending"],
    ]);
    const j = JSON.parse((await cli(["ports", "-o", "json"])).stdout) as unknown[];
    expect(j).toMatchObject([{ port: { hostPort: 8080 } }, { route: { hostname: "app.example.test" } }]);
  });
});
