// The chaos suite in short form (npm run chaos runs the full one): every
// scenario once with short storms against real etcd members, coordinator
// processes and agent sessions, and not one violation.
import { describe, expect, it } from "vitest";
import { SCENARIOS, runChaos } from "../../chaos/run.js";
import { summarize } from "../../chaos/summary.js";

describe("chaos (short form)", () => {
  it("every fault scenario, random timing: no acknowledged VM lost, none on two hosts, no IP twice, capacity kept", async () => {
    const seed = Date.now() % 2 ** 31;
    // Lines and steps are printed as they come: a run that hangs until the timeout still shows how far it got.
    const at = (): string => new Date().toISOString().slice(11, 19);
    console.log(`[chaos ${at()}] seed ${seed}`);
    const results = await runChaos({
      scenarios: SCENARIOS,
      repeats: 1,
      stormMs: 4000,
      // Settling takes 0.1-4 s here, loaded or not: 30 s (not the suite's 90) lets a cluster that
      // does not settle fail every run with its violations within the test's time, not time out.
      settleMs: 30_000,
      hosts: 3,
      seed,
      log: (s) => console.log(`[chaos ${at()}] ${s}`),
      progress: (s) => console.log(`[chaos ${at()}] ${s}`),
    });
    const s = summarize(results);
    console.log(`${s.text}\n${s.last} (seed ${seed})`);
    expect(results).toHaveLength(SCENARIOS.length);
    expect(results.flatMap((r) => r.violations)).toEqual([]);
    // The storm really ran through each fault.
    for (const r of results) expect(r.acked, `${r.scenario}: every call refused: ${JSON.stringify(r.errors)}`).toBeGreaterThan(0);
  }, 420_000);
});
