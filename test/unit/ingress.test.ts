// The ingress, pure parts and nginx's own verdict on them: the rendered configuration
// (checked by the real `nginx -t`, in a temp prefix, never started), the access log lines,
// and the agent's ingress settings.
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { NoidError } from "../../common/errors.js";
import { run } from "../../common/run.js";
import { parseAccessLine, renderNginx, type NginxSettings } from "../../agent/ingress/nginx-config.js";
import { parseAgentConfig } from "../../agent/config.js";
import { loadConfig } from "../../agent/main.js";

const dir = mkdtempSync(join(tmpdir(), "noid-ingress-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const S: NginxSettings = { prefix: dir, listen: "127.0.0.1:18080", user: "nobody", group: "nogroup" };
const ROUTES = [
  { hostname: "app.example.test", upstream: "100.64.0.2:40000" },
  { hostname: "api.example.test", upstream: "100.64.0.3:40001" },
];

const code = (f: () => unknown): string => {
  try {
    f();
    return "OK";
  } catch (e) {
    return e instanceof NoidError ? e.code : String(e);
  }
};

async function nginxTest(text: string): Promise<{ ok: boolean; out: string }> {
  for (const d of ["logs", "tmp"]) mkdirSync(join(dir, d), { recursive: true });
  const conf = join(dir, "t.conf");
  writeFileSync(conf, text);
  const r = await run(["/usr/sbin/nginx", "-t", "-c", conf, "-p", dir, "-e", join(dir, "logs", "error.log")], { allowFail: true });
  return { ok: r.exitCode === 0, out: r.stderr };
}

describe("nginx configuration", () => {
  it("has a server per route proxying to the VM host's mesh port, and a 404 default", () => {
    const text = renderNginx(S, ROUTES);
    expect(text).toContain("daemon off;");
    expect(text).toMatch(/listen 127\.0\.0\.1:18080 default_server;\n\s+server_name _;\n\s+return 404;/);
    expect(text).toMatch(/server_name api\.example\.test;\n\s+location \/ \{\n\s+proxy_pass http:\/\/100\.64\.0\.3:40001;/);
    expect(text.indexOf("api.example.test")).toBeLessThan(text.indexOf("app.example.test")); // stable order
    expect(text).toContain(`access_log ${dir}/logs/access.log noid;`);
    expect(text).not.toContain("/etc/nginx");
    expect(renderNginx(S, [...ROUTES].reverse())).toBe(text);
  });

  it("is accepted by nginx -t; a name nginx cannot hash is refused by it", async () => {
    const good = await nginxTest(renderNginx(S, ROUTES));
    expect(good.ok, good.out).toBe(true);
    expect(await nginxTest(renderNginx(S, []))).toMatchObject({ ok: true });
    const long = `${["a", "b", "c", "d"].map((c) => c.repeat(60)).join(".")}.test`;
    const bad = await nginxTest(renderNginx(S, [...ROUTES, { hostname: long, upstream: "100.64.0.2:40002" }]));
    expect(bad.ok).toBe(false);
    expect(bad.out).toMatch(/server_names_hash/);
  });

  it("refuses input that could change the configuration's meaning", () => {
    const bad = (r: { hostname: string; upstream: string }, s: Partial<NginxSettings> = {}) => code(() => renderNginx({ ...S, ...s }, [r]));
    expect(bad({ hostname: "a.test; return 200", upstream: "100.64.0.2:1" })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostname: "A.test", upstream: "100.64.0.2:1" })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostname: "a.test", upstream: "100.64.0.2:1; include /etc/passwd" })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostname: "a.test", upstream: "evil.example:80" })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostname: "a.test", upstream: "100.64.0.2:1" }, { prefix: "/tmp/x y" })).toBe("INVALID_ARGUMENT");
    expect(bad({ hostname: "a.test", upstream: "100.64.0.2:1" }, { listen: "0.0.0.0:80 reuseport" })).toBe("INVALID_ARGUMENT");
    expect(code(() => renderNginx(S, [ROUTES[0]!, ROUTES[0]!]))).toBe("INVALID_ARGUMENT");
  });

  it("reads its JSON access log lines", () => {
    const line = '{"time":"2026-12-01T13:00:00+00:00","remote":"10.99.1.254","host":"app.example.test","method":"GET","uri":"/x?y=1","status":"200","bytes":"33","upstream":"100.64.0.2:40000","upstream_status":"200","request_time":"0.004"}';
    expect(parseAccessLine(line)).toMatchObject({ host: "app.example.test", status: 200, bytes: 33, uri: "/x?y=1", request_time: 0.004 });
    expect(parseAccessLine('{"time":"2026')).toBeUndefined();
    expect(parseAccessLine("not json")).toBeUndefined();
  });
});

describe("agent ingress settings", () => {
  it("are off by default; --ingress and --ingress-port turn them on", () => {
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1" }).ingress).toEqual({ enabled: false, port: 80, binary: "/usr/sbin/nginx" });
    expect(parseAgentConfig({ coordinator: "x:1", name: "h1", ingress: true, ingress_port: 8080 }).ingress).toMatchObject({ enabled: true, port: 8080 });
    expect(() => parseAgentConfig({ coordinator: "x:1", name: "h1", ingress_port: 0 })).toThrow(/ingress_port/);
    const tokenFile = join(dir, "token");
    writeFileSync(tokenFile, "t\n");
    const { config } = loadConfig(["--coordinator", "x:1", "--name", "h1", "--insecure", "--token-file", tokenFile, "--ingress", "--ingress-port", "8081"], {});
    expect(config.ingress).toMatchObject({ enabled: true, port: 8081 });
  });
});
