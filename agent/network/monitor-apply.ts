// Thin I/O for the monitor table (monitor-rules.ts): replace it atomically when it drifted
// (keeping counter values), verify by reading it back, read it for detection and metrics.
import { NoidError } from "../../common/errors.js";
import type { Runner } from "../../common/run.js";
import { nftCounters } from "../../common/nft-json.js";
import { MONITOR_TABLE, type MonitorSpec, monitorDrift, monitorReadings, renderMonitor } from "./monitor-rules.js";

export interface MonitorHost {
  runner: Runner;
  netns?: string;
}

const nsOpt = (h: MonitorHost): { netns?: string } => (h.netns !== undefined ? { netns: h.netns } : {});

/** The table as JSON (with set elements), or undefined when it does not exist. */
export async function readMonitorTable(h: MonitorHost): Promise<string | undefined> {
  const r = await h.runner(["nft", "-j", "list", "table", "bridge", MONITOR_TABLE], { ...nsOpt(h), allowFail: true });
  return r.exitCode === 0 ? r.stdout : undefined;
}

/** Applies the table if it drifted; returns the drift that was repaired (empty = nothing done). */
export async function applyMonitor(spec: MonitorSpec, h: MonitorHost): Promise<string[]> {
  const before = await readMonitorTable(h);
  const drift = monitorDrift(spec, before);
  if (drift.length === 0) return [];
  const counts = before === undefined ? new Map() : nftCounters(before);
  await h.runner(["nft", "-f", "-"], { ...nsOpt(h), input: renderMonitor(spec, counts) });
  const after = monitorDrift(spec, await readMonitorTable(h));
  if (after.length > 0) throw new NoidError("INTERNAL", `monitor table still drifts after apply: ${after.join("; ")}`);
  return drift;
}

export async function readMonitor(spec: MonitorSpec, h: MonitorHost): Promise<ReturnType<typeof monitorReadings>> {
  const json = await readMonitorTable(h);
  return json === undefined ? { vms: [], networks: [] } : monitorReadings(spec, json);
}

/** Removes our table (no other table is touched). */
export async function removeMonitor(h: MonitorHost): Promise<void> {
  await h.runner(["nft", "delete", "table", "bridge", MONITOR_TABLE], { ...nsOpt(h), allowFail: true });
}
