// Reads what posture.ts judges: files under a root directory ("/" on a real host, a
// temporary tree in tests) and the nftables ruleset of the current (or a given) netns.
import { existsSync, readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../../common/run.js";
import type { PostureInputs } from "./posture.js";

const under = (root: string, abs: string): string => join(root, abs);

function readIf(path: string): string | undefined {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return undefined;
  }
}

/** Files of one directory, by absolute (in-root) path, name order; empty when absent. */
function dirFiles(root: string, absDir: string): Map<string, string> {
  const out = new Map<string, string>();
  const dir = under(root, absDir);
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (!statSync(p).isFile()) continue;
    out.set(`${absDir}/${name}`, readIf(p) ?? "");
  }
  return out;
}

function exists(root: string, paths: readonly string[]): boolean {
  return paths.some((p) => existsSync(under(root, p)));
}

export async function observePosture(opts: { root?: string; runner: Runner; netns?: string }): Promise<PostureInputs> {
  const root = opts.root ?? "/";
  const sshdConfig = readIf(under(root, "/etc/ssh/sshd_config"));
  // Include patterns on Debian point into sshd_config.d: read that directory; posture.ts
  // splices in only the files an Include line of the main file names.
  const includes = dirFiles(root, "/etc/ssh/sshd_config.d");
  const aptConf = new Map<string, string>();
  for (const [p, body] of dirFiles(root, "/etc/apt/apt.conf.d")) aptConf.set(p.split("/").pop()!, body);
  let nftRuleset: unknown;
  const r = await opts.runner(["nft", "-j", "list", "ruleset"], { allowFail: true, ...(opts.netns ? { netns: opts.netns } : {}) });
  if (r.exitCode === 0) {
    try {
      nftRuleset = JSON.parse(r.stdout);
    } catch {
      nftRuleset = undefined;
    }
  }
  return {
    sshdConfig,
    sshdIncludes: includes,
    aptConf,
    unattendedUpgradesInstalled: exists(root, ["/usr/bin/unattended-upgrade", "/usr/bin/unattended-upgrades"]),
    fail2banInstalled: exists(root, ["/usr/bin/fail2ban-server"]),
    nftRuleset,
  };
}
