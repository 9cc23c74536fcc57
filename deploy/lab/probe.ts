// Reachability probes inside the lab. iputils `ping` is not on every machine we run on
// (minimal Debian images lack it) while busybox usually is, so pick whichever exists.
import { existsSync } from "node:fs";

const PING_PATHS = ["/usr/bin/ping", "/bin/ping", "/usr/sbin/ping"];
const BUSYBOX_PATHS = ["/usr/bin/busybox", "/bin/busybox"];

/** argv for one ICMP echo to `address`, waiting at most `waitS` seconds. */
export function pingArgv(address: string, opts: { count?: number; waitS?: number } = {}): string[] {
  const args = ["-c", String(opts.count ?? 1), "-W", String(opts.waitS ?? 2), address];
  if (PING_PATHS.some((p) => existsSync(p))) return ["ping", ...args];
  const bb = BUSYBOX_PATHS.find((p) => existsSync(p));
  if (bb) return [bb, "ping", ...args];
  return ["ping", ...args]; // fails with a clear "could not run" from the runner
}
