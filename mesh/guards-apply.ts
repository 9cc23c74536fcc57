// Thin I/O for the guards: replace our nftables table atomically when it drifted (keeping
// counter values), verify by reading it back, and read the drop counters.
import { NoidError } from "../common/errors.js";
import type { Runner } from "../common/run.js";
import { GUARD_TABLE, type GuardCounter, type GuardSpec, counterValues, guardCounters, guardDrift, renderGuards } from "./guards.js";

export interface GuardHost {
  runner: Runner;
  netns?: string;
}

const nsOpt = (h: GuardHost): { netns?: string } => (h.netns !== undefined ? { netns: h.netns } : {});

/** The table as JSON, or undefined when it does not exist. */
export async function readGuardTable(h: GuardHost): Promise<string | undefined> {
  const r = await h.runner(["nft", "-j", "list", "table", "bridge", GUARD_TABLE], { ...nsOpt(h), allowFail: true });
  return r.exitCode === 0 ? r.stdout : undefined;
}

/** Applies the guards if they drifted; returns the drift that was repaired (empty = nothing done). */
export async function applyGuards(spec: GuardSpec, h: GuardHost): Promise<string[]> {
  const before = await readGuardTable(h);
  const drift = guardDrift(spec, before);
  if (drift.length === 0) return [];
  // The counters of the old table become the initial values of the new one, so a change of
  // one VM's guards does not reset every VM's security event counts.
  const counts = before === undefined ? new Map() : counterValues(before);
  await h.runner(["nft", "-f", "-"], { ...nsOpt(h), input: renderGuards(spec, counts) });
  const after = guardDrift(spec, await readGuardTable(h));
  if (after.length > 0) throw new NoidError("INTERNAL", `guards still drift after apply: ${after.join("; ")}`);
  return drift;
}

export async function readGuardCounters(spec: GuardSpec, h: GuardHost): Promise<GuardCounter[]> {
  const json = await readGuardTable(h);
  return json === undefined ? [] : guardCounters(spec, json);
}

/** Removes our table (no other table is touched). */
export async function removeGuards(h: GuardHost): Promise<void> {
  await h.runner(["nft", "delete", "table", "bridge", GUARD_TABLE], { ...nsOpt(h), allowFail: true });
}
